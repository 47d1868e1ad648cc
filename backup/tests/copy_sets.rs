//! Copy sets on real files: a hot copy under write load is its files
//! exactly as of one LSN; restore, regenerate and backout reproduce the
//! states the log's after- and before-images say; damage is named.

use backup::restore::{self, Target};
use backup::take::{take_job, Ask, Source};
use backup::Area;
use propagator::record::encode_record;
use propagator::{Database, DbId, Fnr, Isn, Lsn, Record, Role, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const MASTER: Fnr = Fnr(10);
const LOG: Fnr = Fnr(11);
const PLAIN: Fnr = Fnr(20);

type Bytes = Vec<u8>;
/// Per commit: its LSN, time and what it left in each record it touched.
type History = Vec<(Lsn, i64, Vec<(Fnr, Isn, Option<Bytes>)>)>;

fn rec(k: u64, v: u64) -> Record {
    let mut r = Record::new();
    r.insert("k".into(), Value::Int(k as i64));
    r.insert("v".into(), Value::Int(v as i64));
    r.insert("pad".into(), Value::Text("x".repeat(40)));
    r
}

fn open_new(dir: &Path) -> Database {
    Database::init(dir, DbId(7), Some(1 << 20)).expect("init");
    let (db, _) = Database::open(dir).expect("open");
    db.create_file(MASTER, "orders", Role::Plain)
        .expect("master");
    db.define_master(MASTER, LOG).expect("define");
    db.create_file(PLAIN, "notes", Role::Plain).expect("plain");
    db
}

/// Fills the master with `n` records in big transactions.
fn fill(db: &Database, n: u64, hist: &Mutex<History>) {
    let mut s = db.session();
    let mut touched = Vec::new();
    for k in 1..=n {
        let r = rec(k, 0);
        s.store(MASTER, Some(Isn(k)), r.clone()).expect("store");
        touched.push((MASTER, Isn(k), Some(encode_record(&r).expect("encodes"))));
        if k.is_multiple_of(5000) || k == n {
            let info = s.et(None).expect("et");
            hist.lock()
                .expect("lock")
                .push((info.lsn, info.time_us, std::mem::take(&mut touched)));
        }
    }
}

/// Random updates, deletes and stores on the master and the plain file
/// until `stop`; every commit goes into `hist`.
fn writer(db: Database, seed: u64, n: u64, stop: Arc<AtomicBool>, hist: Arc<Mutex<History>>) {
    let mut rng = fastrand_like(seed);
    let mut s = db.session();
    let mut v = 0u64;
    while !stop.load(Ordering::Relaxed) {
        v += 1;
        let k = 1 + rng() % n;
        let fnr = if rng().is_multiple_of(4) {
            PLAIN
        } else {
            MASTER
        };
        let cur = s.read(fnr, Isn(k)).expect("read");
        let after = match (cur.is_some(), rng() % 5) {
            (true, 0) => {
                s.delete(fnr, Isn(k)).expect("delete");
                None
            }
            (true, _) => {
                let mut p = Record::new();
                p.insert("v".into(), Value::Int(v as i64));
                s.update(fnr, Isn(k), p).expect("update");
                s.read(fnr, Isn(k))
                    .expect("read")
                    .map(|r| encode_record(&r).expect("encodes"))
            }
            (false, _) => {
                let r = rec(k, v);
                s.store(fnr, Some(Isn(k)), r.clone()).expect("store");
                Some(encode_record(&r).expect("encodes"))
            }
        };
        match s.et(None) {
            Ok(info) => hist.lock().expect("lock").push((
                info.lsn,
                info.time_us,
                vec![(fnr, Isn(k), after)],
            )),
            Err(e) => panic!("commit failed: {e}"),
        }
    }
}

/// A small xorshift: deterministic per seed, no dependency.
fn fastrand_like(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// Takes one copy set of `files` of the database opened here.
fn take_set(area: &Area, db: &Database, files: &[Fnr]) -> Result<backup::CopySet, backup::Error> {
    let mut t = take_job(
        area,
        None,
        &[Ask {
            source: Source::Local(db.clone()),
            files: files.to_vec(),
        }],
        &mut |_| {},
    )?;
    Ok(t.remove(0).set)
}

/// The content of `fnr` after every commit with LSN at most `lsn`.
fn state_at(hist: &History, fnr: Fnr, lsn: Lsn) -> BTreeMap<Isn, Bytes> {
    let mut h: Vec<_> = hist.iter().filter(|c| c.0 <= lsn).collect();
    h.sort_by_key(|c| c.0);
    let mut out = BTreeMap::new();
    for (_, _, t) in h {
        for (f, i, v) in t {
            if *f == fnr {
                match v {
                    Some(b) => out.insert(*i, b.clone()),
                    None => out.remove(i),
                };
            }
        }
    }
    out
}

fn content(db: &Database, fnr: Fnr) -> BTreeMap<Isn, Bytes> {
    let mut out = BTreeMap::new();
    db.for_each_raw(fnr, Isn(1), |i, b| {
        out.insert(i, b.to_vec());
        Ok(true)
    })
    .expect("scan");
    out
}

fn log_upto(all: &BTreeMap<Isn, Bytes>, seq: u64) -> BTreeMap<Isn, Bytes> {
    all.iter()
        .filter(|(i, _)| i.0 <= seq)
        .map(|(i, b)| (*i, b.clone()))
        .collect()
}

#[test]
fn hot_copy_restore_regenerate_and_damage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("db");
    let db = open_new(&data);
    let hist = Arc::new(Mutex::new(History::new()));
    fill(&db, 40_000, &hist);
    let area = Area::open(&tmp.path().join("area")).expect("area");

    // Copies under write load, until one of them caught commits in its slice.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|i| {
            let (db, stop, hist) = (db.clone(), stop.clone(), hist.clone());
            std::thread::spawn(move || writer(db, 11 + i, 45_000, stop, hist))
        })
        .collect();
    let mut sets = Vec::new();
    for _ in 0..10 {
        let t = take_set(&area, &db, &[MASTER, PLAIN]).expect("take");
        let set = t;
        let caught = set.members.iter().any(|m| m.copy.end.slice_commits > 0);
        sets.push(set);
        if caught && sets.len() >= 2 {
            break;
        }
    }
    // Let the log run on past the last copy.
    let until = db.last_lsn().0 + 300;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while db.last_lsn().0 < until {
        assert!(std::time::Instant::now() < deadline, "writers stalled");
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    let hist = hist.lock().expect("lock").clone();
    assert!(
        sets.iter()
            .any(|s| s.members.iter().any(|m| m.copy.end.slice_commits > 0)),
        "no copy was taken while commits were in flight: the log slice went untested"
    );
    let log_now = content(&db, LOG);
    let end = db.last_lsn();

    // Each set restored into a new database is its files as of its LSN.
    for (n, set) in sets.iter().enumerate() {
        assert_eq!(
            set.members.iter().map(|m| m.fnr).collect::<Vec<_>>(),
            vec![MASTER, LOG, PLAIN],
            "the log came with its master"
        );
        let dir = tmp.path().join(format!("restored{n}"));
        let mut seen = Vec::new();
        restore::restore_to_dir(&dir, &area, set, &mut |p| seen.push(p.clone())).expect("restore");
        // It says how far it has got: every record of the set read once
        // (a new database is checked as it is written), counting up to the
        // set's records.
        let records: u64 = set.members.iter().map(|m| m.copy.end.meta.count).sum();
        progressed(&seen, "restore", records, records);
        assert!(seen.iter().all(|p| p.phase == "restore"), "{seen:?}");
        let (r, _) = Database::open(&dir).expect("open restored");
        assert_eq!(
            content(&r, MASTER),
            state_at(&hist, MASTER, set.lsn),
            "master at {}",
            set.lsn
        );
        assert_eq!(
            content(&r, PLAIN),
            state_at(&hist, PLAIN, set.lsn),
            "plain at {}",
            set.lsn
        );
        let seq = set.seqs[&MASTER].0;
        assert_eq!(
            content(&r, LOG),
            log_upto(&log_now, seq),
            "log at seq {seq}"
        );
        assert_eq!(r.file_info(LOG).expect("log").meta.next_isn, seq + 1);
        assert!(r.check().expect("check").is_ok());
        r.close().expect("close");
    }
    db.close().expect("close");

    // Regenerate to chosen LSNs and to the end, into new databases.
    let (db, _) = Database::open(&data).expect("reopen");
    let first = &sets[0];
    let mut points = vec![
        first.lsn.0 + 1,
        first.lsn.0 + 97,
        (first.lsn.0 + end.0) / 2,
        end.0,
    ];
    points.dedup();
    for (n, p) in points.iter().enumerate() {
        let dir = tmp.path().join(format!("regen{n}"));
        Database::init(&dir, DbId(7), None).expect("init");
        let (into, _) = Database::open(&dir).expect("open");
        let target = if *p == end.0 {
            Target::End
        } else {
            Target::Lsn(Lsn(*p))
        };
        let mut seen = Vec::new();
        let r = restore::regenerate(&db, &area, MASTER, target, Some(&into), &mut |p| {
            seen.push(p.clone())
        })
        .expect("regenerate");
        assert_eq!(r.restored.lsn, Lsn(*p));
        // Rolled forward through every log entry from the set's LSN on.
        let from = r.from_lsn.0;
        progressed(&seen, "roll forward", *p - from, *p - from);
        assert_eq!(
            content(&into, MASTER),
            state_at(&hist, MASTER, Lsn(*p)),
            "master at {p}"
        );
        assert_eq!(
            content(&into, PLAIN),
            state_at(&hist, PLAIN, Lsn(*p)),
            "plain at {p}"
        );
        assert!(into.check().expect("check").is_ok());
        into.close().expect("close");
    }
    // A time target: everything committed at or before a commit's time.
    let mid = hist
        .iter()
        .find(|c| c.0 .0 == (first.lsn.0 + end.0) / 2)
        .expect("mid commit");
    let dir = tmp.path().join("regen-time");
    Database::init(&dir, DbId(7), None).expect("init");
    let (into, _) = Database::open(&dir).expect("open");
    let r = restore::regenerate(
        &db,
        &area,
        MASTER,
        Target::Time(mid.1),
        Some(&into),
        &mut |_| {},
    )
    .expect("by time");
    let reached = r.restored.lsn;
    assert!(reached >= mid.0);
    assert_eq!(content(&into, MASTER), state_at(&hist, MASTER, reached));
    // A master set back (here into a new database) is in a later
    // incarnation than the copy's, so the seqs it gives out next are
    // told apart from those its replicates confirmed.
    assert_eq!(incarnation(&into), incarnation(&db) + 1);
    into.close().expect("close");

    // Backout of the master to that time gives the same master, and the
    // log at the seq it had then.
    let mut seen = Vec::new();
    let inc = incarnation(&db);
    let b = restore::backout(&db, MASTER, mid.1, &mut |p| seen.push(p.clone())).expect("backout");
    assert_eq!(
        incarnation(&db),
        inc + 1,
        "a backout raises the incarnation"
    );
    // It reports reading the log, then rewriting every record of the
    // master and its log from the page store.
    let read = seen.iter().filter(|p| p.phase == "read log").count();
    assert!(
        read >= 2,
        "backout reported no reading of the log: {seen:?}"
    );
    let total = seen
        .iter()
        .find(|p| p.phase == "back out")
        .map_or(0, |p| p.total);
    assert!(total > 0, "{seen:?}");
    progressed(&seen, "back out", total, total);
    assert!(b.commits > 0);
    assert_eq!(content(&db, MASTER), state_at(&hist, MASTER, reached));
    assert!(db.check().expect("check").is_ok());
    db.close().expect("close");

    // A flipped byte anywhere in a copy file is named by verify and
    // refused by restore; the other sets still verify.
    let victim = &sets[0];
    let m = victim.member(MASTER).expect("member");
    let path = area
        .data_dir(&victim.id)
        .expect("set id")
        .join(&m.copy.name);
    for offset in [20u64, m.copy.bytes / 2, m.copy.bytes - 3] {
        let orig = std::fs::read(&path).expect("read");
        let mut bad = orig.clone();
        bad[offset as usize] ^= 0x40;
        std::fs::write(&path, &bad).expect("write");
        let e = restore::verify_set(&area, victim, &mut |_| {}).expect_err("damage found");
        assert!(
            format!("{e:#}").contains(&m.copy.name),
            "names the file: {e:#}"
        );
        let into = tmp.path().join(format!("no{offset}"));
        let e = restore::restore_to_dir(&into, &area, victim, &mut |_| {})
            .expect_err("restore refused");
        assert!(format!("{e:#}").contains(&m.copy.name), "{e:#}");
        // The new database it began is gone: nothing of it reads as restored.
        assert!(!into.exists(), "{} was left behind", into.display());
        std::fs::write(&path, &orig).expect("repair");
    }
    restore::verify_set(&area, victim, &mut |_| {}).expect("intact again");

    // The horizon is the newest set's seq.
    let h = area.horizons(DbId(7)).expect("horizons");
    assert_eq!(h[&MASTER], sets.last().expect("a set").seqs[&MASTER]);
}

#[test]
fn regenerate_and_backout_refuse_what_the_log_does_not_cover() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("db");
    let db = open_new(&data);
    let hist = Mutex::new(History::new());
    let area = Area::open(&tmp.path().join("area")).expect("area");
    let e = restore::regenerate(&db, &area, MASTER, Target::End, None, &mut |_| {})
        .expect_err("no set");
    assert!(e.to_string().contains("no copy set"), "{e}");
    fill(&db, 3000, &hist);
    take_set(&area, &db, &[MASTER]).expect("take");
    // Past the end of the log.
    let e = restore::regenerate(
        &db,
        &area,
        MASTER,
        Target::Lsn(Lsn(db.last_lsn().0 + 50)),
        None,
        &mut |_| {},
    )
    .expect_err("past the end");
    assert!(e.to_string().contains("past the end"), "{e:#}");
    // A log refused alone; a log backout refused.
    let e = take_set(&area, &db, &[LOG]).expect_err("log alone");
    assert!(
        format!("{e:#}").contains("copied only with its master"),
        "{e:#}"
    );
    let e = restore::backout(&db, LOG, 0, &mut |_| {}).expect_err("log backout");
    assert!(e.to_string().contains("back out its master"), "{e}");
    db.close().expect("close");
}

#[test]
fn log_segments_are_archived_first_and_never_removed_past_the_oldest_copy() {
    use backup::archive;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("db");
    let db = open_new(&data); // 1 MiB segments
    let hist = Mutex::new(History::new());
    fill(&db, 50_000, &hist);
    let area = Area::open(&tmp.path().join("area")).expect("area");
    let src = Source::Local(db.clone());
    let closed = |db: &Database| {
        db.plog_segments()
            .expect("segments")
            .iter()
            .filter(|s| s.last_lsn.is_some())
            .count()
    };
    assert!(
        closed(&db) >= 2,
        "the fill spans several segments: {:?}",
        db.plog_segments()
    );
    // Without a copy set nothing is removed, archived or not.
    let a = archive::archive(&area, &src).expect("archive");
    assert_eq!(a.len(), closed(&db));
    let p = archive::prune(&area, &src).expect("prune");
    assert!(p.horizon.is_none() && p.removed.is_empty(), "{}", p.note);
    // A copy set, then more commits: only archived segments wholly before
    // the set's LSN may go.
    let set = take_set(&area, &db, &[MASTER]).expect("take");
    let mut s = db.session();
    for k in 1..=50_000u64 {
        s.update(MASTER, Isn(k), rec(k, 1)).expect("update");
        if k.is_multiple_of(5000) {
            s.et(None).expect("et");
        }
    }
    drop(s);
    let p = archive::prune(&area, &src).expect("prune");
    assert!(!p.removed.is_empty(), "{}", p.note);
    for r in &p.removed {
        assert!(
            r.last_lsn.expect("closed") <= set.lsn,
            "removed {r:?} past {}",
            set.lsn
        );
    }
    let first = db.plog_segments().expect("segments")[0].first_lsn;
    assert!(
        first.0 <= set.lsn.0 + 1,
        "the log still covers the set's roll-forward"
    );
    // Segments not archived yet stay, even when old enough.
    let archived: Vec<u64> = archive::list(&area, DbId(7))
        .expect("list")
        .iter()
        .map(|a| a.segment.no)
        .collect();
    for r in &p.removed {
        assert!(archived.contains(&r.no));
    }
    // The set still rolls forward to the end; the database still opens.
    let into_dir = tmp.path().join("regen");
    Database::init(&into_dir, DbId(7), None).expect("init");
    let (into, _) = Database::open(&into_dir).expect("open");
    restore::regenerate(&db, &area, MASTER, Target::End, Some(&into), &mut |_| {})
        .expect("regenerate");
    assert_eq!(content(&into, MASTER), content(&db, MASTER));
    into.close().expect("close");
    drop(src);
    db.close().expect("close");
    let (db, _) = Database::open(&data).expect("reopens after removal");
    assert!(db.check().expect("check").is_ok());
    // Backout to a time before the remaining log is refused, saying where
    // the log starts now.
    let e = restore::backout(&db, MASTER, 0, &mut |_| {}).expect_err("not covered");
    assert!(
        e.to_string().contains("no longer holds the before-images"),
        "{e}"
    );
    // A damaged archived segment is named and stops the prune.
    let src = Source::Local(db.clone());
    archive::archive(&area, &src).expect("archive the rest");
    take_set(&area, &db, &[MASTER]).expect("take");
    area.remove(&set.id).expect("drop the old set");
    let victim = archive::list(&area, DbId(7))
        .expect("list")
        .into_iter()
        .find(|a| {
            db.plog_segments()
                .expect("segments")
                .iter()
                .any(|s| s.no == a.segment.no)
        })
        .expect("an archived segment still in the log");
    let path = area
        .root()
        .join("plog")
        .join("db7")
        .join(&victim.segment.name);
    let mut b = std::fs::read(&path).expect("read");
    b[100] ^= 1;
    std::fs::write(&path, &b).expect("write");
    let e = archive::prune(&area, &src).expect_err("damaged archive");
    assert!(format!("{e:#}").contains(&victim.segment.name), "{e:#}");
    drop(src);
    db.close().expect("close");
}

/// `seen` holds a `phase` that counts up (never back) from 0 to `done`, of
/// `total`, and reports more than its start and end.
fn progressed(seen: &[restore::Progress], phase: &str, done: u64, total: u64) {
    let p: Vec<_> = seen.iter().filter(|p| p.phase == phase).collect();
    assert!(p.len() >= 2, "phase {phase}: {seen:?}");
    assert_eq!(p[0].done, 0, "phase {phase} starts at 0: {seen:?}");
    assert!(
        p.windows(2)
            .all(|w| w[0].done <= w[1].done && w[1].total == total),
        "phase {phase} counts up to {total}: {p:?}"
    );
    assert_eq!(p.last().map(|l| l.done), Some(done), "phase {phase}: {p:?}");
}

/// A restore into an empty file in bulk: the log names its chunk but does
/// not carry it, so a roll-forward, a backout or a copy that would cross it
/// is refused (naming it), and one that stops short of it, or starts after
/// it, is not.
#[test]
fn a_roll_forward_or_backout_across_a_bulk_chunk_is_refused_and_one_short_of_it_is_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = open_new(&tmp.path().join("db"));
    let area = Area::open(&tmp.path().join("area")).expect("area");
    let commit = |k: u64, v: u64| {
        let mut s = db.session();
        if k > 0 && db.read(PLAIN, Isn(k)).expect("read").is_some() {
            s.update(PLAIN, Isn(k), rec(k, v)).expect("update");
        } else {
            s.store(PLAIN, Some(Isn(k)), rec(k, v)).expect("store");
        }
        s.et(None).expect("et")
    };
    commit(1, 1);
    let before_set = take_set(&area, &db, &[PLAIN]).expect("a set before");
    // Emptied, then restored from empty in bulk.
    let mut s = db.session();
    s.delete(PLAIN, Isn(1)).expect("delete");
    s.et(None).expect("et");
    drop(s);
    let short = commit(2, 2);
    let mut s = db.session();
    s.delete(PLAIN, Isn(2)).expect("delete");
    s.et(None).expect("et");
    drop(s);
    db.begin_restore(PLAIN, "a bulk test").expect("begin");
    let next = db.file_info(PLAIN).expect("info").meta.next_isn;
    let records: Vec<(Isn, Vec<u8>)> = (next..next + 10)
        .map(|k| (Isn(k), encode_record(&rec(k, 7)).expect("encode")))
        .collect();
    let mut want = db.file_info(PLAIN).expect("info").meta;
    for (i, b) in &records {
        want.change(*i, None, Some(b));
    }
    let sum = propagator::database::chunk_sum(&records);
    let bulk = db
        .restore_range_queued(
            PLAIN,
            Isn(next),
            None,
            records,
            Some(want),
            propagator::database::Restore::Bulk { sum },
        )
        .expect("bulk chunk")
        .0
        .wait()
        .expect("durable");
    let after = commit(next, 8);
    let into = |name: &str| {
        let d = tmp.path().join(name);
        Database::init(&d, DbId(7), None).expect("init");
        Database::open(&d).expect("open").0
    };
    let regenerate = |target: Target, name: &str| {
        restore::regenerate(&db, &area, PLAIN, target, Some(&into(name)), &mut |_| {})
    };
    let crosses = |e: &dyn std::fmt::Display| {
        let t = e.to_string();
        assert!(
            t.contains(&format!("LSN {} wrote isns", bulk.lsn)) && t.contains("in bulk"),
            "{t}"
        );
    };
    // Roll-forward from the set before it: to the end, refused; to an LSN
    // short of it, done.
    let e = regenerate(Target::End, "r1").expect_err("across the bulk chunk");
    crosses(&format!("{e:#}"));
    let r = regenerate(Target::Lsn(short.lsn), "r2").expect("short of the bulk chunk");
    assert_eq!(r.restored.set, before_set.id);
    // Backout: to a time after it, done; to one before it, refused.
    restore::backout(&db, PLAIN, after.time_us - 1, &mut |_| {}).expect("after the bulk chunk");
    let e = restore::backout(&db, PLAIN, short.time_us, &mut |_| {}).expect_err("across it");
    crosses(&format!("{e:#}"));
    // A set taken after it rolls forward from there.
    take_set(&area, &db, &[PLAIN]).expect("a set after");
    commit(next, 9);
    regenerate(Target::End, "r3").expect("from the set after the bulk chunk");
    db.close().expect("close");
}

/// A master's incarnation in `db`.
fn incarnation(db: &Database) -> u32 {
    match db.file(MASTER).expect("master").role {
        propagator::Role::Master { incarnation, .. } => incarnation,
        r => panic!("file {MASTER} is a {} file", r.name()),
    }
}

/// Issue 21 items 2 and 3: a database whose page store is deleted (and,
/// separately, damaged) is rebuilt without opening it, from its newest copy
/// set rolled forward with its protection log, the segments pruned from the
/// live log read back from the archive; a flipped byte in the middle of the
/// log stops a recovery to the end, and one to the last good LSN names the
/// commits lost after it with their files; with the log reaching back to
/// LSN 1 and no copy, the log alone rebuilds it.
#[test]
fn a_database_that_will_not_open_is_recovered_from_copy_and_archived_log() {
    use backup::archive;
    use backup::recover_db::{recover, Until};
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("db");
    let db = open_new(&data); // 1 MiB segments
    let hist = Mutex::new(History::new());
    fill(&db, 30_000, &hist);
    let area = Area::open(&tmp.path().join("area")).expect("area");
    let src = Source::Local(db.clone());
    take_set(&area, &db, &[MASTER, PLAIN]).expect("take");
    let mut s = db.session();
    for round in 1..=2u64 {
        let mut touched = Vec::new();
        for k in 1..=30_000u64 {
            let r = rec(k, round);
            s.update(MASTER, Isn(k), r.clone()).expect("update");
            touched.push((MASTER, Isn(k), Some(encode_record(&r).expect("encodes"))));
            if k.is_multiple_of(5000) {
                let info = s.et(None).expect("et");
                hist.lock().expect("lock").push((
                    info.lsn,
                    info.time_us,
                    std::mem::take(&mut touched),
                ));
            }
        }
    }
    drop(s);
    // A second set, then everything archived and the live log pruned up
    // to the oldest set: the newest set's roll-forward is in the live log.
    let newest = take_set(&area, &db, &[MASTER]).expect("take");
    archive::archive(&area, &src).expect("archive");
    let pruned = archive::prune(&area, &src).expect("prune");
    assert!(!pruned.removed.is_empty(), "{}", pruned.note);
    let want = content(&db, MASTER);
    let want_plain = content(&db, PLAIN);
    let last = db.last_lsn();
    db.close().expect("close");
    drop(src);
    // The page store is deleted: the database no longer opens.
    let store = data.join("store");
    std::fs::remove_dir_all(&store).expect("delete the page store");
    let into = tmp.path().join("recovered");
    let r = recover(&data, Some(&area), Some(&into), Until::End, &mut |_| {}).expect("recover");
    assert_eq!(r.lsn, last);
    assert_eq!(r.method, "copies and log");
    assert!(r.lost.is_none() && r.not_recovered.is_empty(), "{r:?}");
    assert!(r.sets.iter().any(|s| s.set == newest.id), "{r:?}");
    // The old log is archived through the recovered LSN (the open segment
    // included, cut after it), so copies roll forward across the recovery.
    assert!(!r.archived.is_empty(), "{r:?}");
    let (got, _) = Database::open(&into).expect("the recovered database opens");
    assert_eq!(content(&got, MASTER), want);
    assert_eq!(content(&got, PLAIN), want_plain);
    assert!(got.check().expect("check").is_ok());
    got.close().expect("close");
    // The live log loses the segments a roll-forward from the oldest set
    // needs (deleted as a lost disk would): read back from the archive.
    let live: Vec<_> = std::fs::read_dir(data.join("plog"))
        .expect("plog")
        .flatten()
        .map(|e| e.path())
        .collect();
    let mut segs = live.clone();
    segs.sort();
    std::fs::remove_file(&segs[0]).expect("lose a live segment");
    // The page store is damaged now (bytes overwritten): never opened.
    std::fs::create_dir_all(&store).expect("store dir");
    std::fs::write(store.join("garbage"), vec![0xA5u8; 4096]).expect("damage");
    // In place: the damaged directory is kept beside the recovered one.
    let r = recover(&data, Some(&area), None, Until::End, &mut |_| {}).expect("recover in place");
    assert!(r.segments.iter().any(|s| s.from == "archive"), "{r:?}");
    let kept = r.damaged_kept.clone().expect("damaged kept");
    assert!(kept.join("store").join("garbage").exists());
    let (got, _) = Database::open(&data).expect("opens in place");
    assert_eq!(content(&got, MASTER), want);
    // Its log goes on after the recovered LSN (no LSN is given out twice
    // beside its copies and archived segments)…
    assert!(got.last_lsn() > last, "{} after {last}", got.last_lsn());
    // (The recovery wrote its files in bulk, which no roll-forward crosses:
    // a copy set of the recovered database is taken at once.)
    take_set(&area, &got, &[MASTER, PLAIN]).expect("take after the recovery");
    let mut s = got.session();
    for k in 1..=100u64 {
        s.update(MASTER, Isn(k), rec(k, 9)).expect("update");
    }
    s.et(None).expect("et");
    drop(s);
    let want_after = content(&got, MASTER);
    got.close().expect("close");
    // …so it can be recovered again, from that copy and its log with the
    // old log's archived segments beside it.
    std::fs::remove_dir_all(data.join("store")).expect("lose the store again");
    let r = recover(
        &data,
        Some(&area),
        Some(&tmp.path().join("again")),
        Until::End,
        &mut |_| {},
    )
    .expect("recover across the first recovery");
    let (got, _) = Database::open(&tmp.path().join("again")).expect("opens");
    assert_eq!(content(&got, MASTER), want_after, "{r:?}");
    got.close().expect("close");

    // A flipped byte in the middle of a closed segment of the old log (the
    // damaged directory kept aside).
    let data = kept;
    let mut segs: Vec<_> = std::fs::read_dir(data.join("plog"))
        .expect("plog")
        .flatten()
        .map(|e| e.path())
        .collect();
    segs.sort();
    let victim = &segs[segs.len() - 2];
    let mut bytes = std::fs::read(victim).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(victim, &bytes).expect("flip");
    std::fs::remove_dir_all(data.join("store")).expect("lose the store again");
    // Its archived copy is intact: the recovery reads that one instead.
    let name = victim
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let r = recover(
        &data,
        Some(&area),
        Some(&tmp.path().join("r1")),
        Until::End,
        &mut |_| {},
    )
    .expect("the archived copy of the damaged segment");
    assert!(
        r.segments
            .iter()
            .any(|s| s.name == name && s.from == "archive"),
        "{r:?}"
    );
    // The archived copy damaged too: nothing whole holds those commits.
    let archived = area.root().join("plog").join("db7").join(&name);
    let mut abytes = std::fs::read(&archived).expect("read the archived copy");
    abytes[at] ^= 0x40;
    std::fs::write(&archived, &abytes).expect("flip the archived copy");
    let e = recover(
        &data,
        Some(&area),
        Some(&tmp.path().join("r2")),
        Until::End,
        &mut |_| {},
    )
    .expect_err("damaged log");
    assert!(format!("{e:#}").contains("--to-last-good"), "{e:#}");
    let r = recover(
        &data,
        Some(&area),
        Some(&tmp.path().join("r3")),
        Until::LastGood,
        &mut |_| {},
    )
    .expect("to the last good LSN");
    let lost = r.lost.clone().expect("lost commits named");
    assert_eq!(lost.from, r.lsn.next());
    assert!(lost.through >= lost.from, "{lost:?}");
    assert!(lost.files.contains(&MASTER), "{lost:?}");
    let (got, _) = Database::open(&tmp.path().join("r3")).expect("opens");
    assert_eq!(
        content(&got, MASTER),
        state_at(&hist.lock().expect("lock"), MASTER, r.lsn)
    );
    got.close().expect("close");
}

/// The log alone: it reaches back to LSN 1 and no copy area is given.
#[test]
fn a_database_whose_log_reaches_back_to_its_start_is_rebuilt_from_the_log_alone() {
    use backup::recover_db::{recover, Until};
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("db");
    let db = open_new(&data);
    let hist = Mutex::new(History::new());
    fill(&db, 20_000, &hist);
    let want = content(&db, MASTER);
    let mid = hist.lock().expect("lock")[1].0;
    let inc0 = incarnation(&db);
    db.close().expect("close");
    std::fs::remove_dir_all(data.join("store")).expect("delete the page store");
    let r = recover(
        &data,
        None,
        Some(&tmp.path().join("r")),
        Until::End,
        &mut |_| {},
    )
    .expect("recover");
    assert_eq!(r.method, "log alone");
    let (got, _) = Database::open(&tmp.path().join("r")).expect("opens");
    assert_eq!(content(&got, MASTER), want);
    // To the end: the same history, the same incarnation.
    assert_eq!(incarnation(&got), inc0);
    got.close().expect("close");
    let r = recover(
        &data,
        None,
        Some(&tmp.path().join("m")),
        Until::Lsn(mid),
        &mut |_| {},
    )
    .expect("recover to an LSN");
    assert_eq!(r.lsn, mid);
    let (got, _) = Database::open(&tmp.path().join("m")).expect("opens");
    assert_eq!(
        content(&got, MASTER),
        state_at(&hist.lock().expect("lock"), MASTER, mid)
    );
    // Set back: its next seqs are of a new incarnation; the commits after
    // the LSN are named as lost, with their files.
    assert_eq!(incarnation(&got), inc0 + 1);
    let lost = r.lost.clone().expect("lost named");
    assert_eq!(lost.from, mid.next());
    assert!(lost.files.contains(&MASTER), "{lost:?}");
    got.close().expect("close");
}

/// Issue 21 item 9: a recovery to the last good LSN re-applies the client
/// transactions read whole after a damage in the middle of the log, each
/// only where every record it changed still holds what it found then; the
/// damaged transaction and the ones that depended on it are named.
#[test]
fn the_transactions_read_whole_after_a_damage_are_reapplied_where_they_still_fit() {
    use backup::recover_db::{recover_with, Until};
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("db");
    let db = open_new(&data);
    let hist = Mutex::new(History::new());
    fill(&db, 300, &hist);
    // Three rounds of one-record updates: each record changes once a round.
    let mut s = db.session();
    for round in 1..=3u64 {
        for k in 1..=300u64 {
            let mut p = Record::new();
            p.insert("v".into(), Value::Int((round * 1000 + k) as i64));
            s.update(MASTER, Isn(k), p).expect("update");
            let after = s
                .read(MASTER, Isn(k))
                .expect("read")
                .map(|r| encode_record(&r).expect("encodes"));
            let info = s.et(Some(format!("t{round}-{k}"))).expect("et");
            hist.lock().expect("lock").push((
                info.lsn,
                info.time_us,
                vec![(MASTER, Isn(k), after)],
            ));
        }
    }
    // One transaction that changes a record twice (its second change finds
    // its first).
    for v in [7001, 7002] {
        let mut p = Record::new();
        p.insert("v".into(), Value::Int(v));
        s.update(MASTER, Isn(5), p).expect("update");
    }
    let after = s
        .read(MASTER, Isn(5))
        .expect("read")
        .map(|r| encode_record(&r).expect("encodes"));
    let info = s.et(Some("twice".into())).expect("et");
    hist.lock()
        .expect("lock")
        .push((info.lsn, info.time_us, vec![(MASTER, Isn(5), after)]));
    drop(s);
    db.close().expect("close");
    let mut segs: Vec<_> = std::fs::read_dir(data.join("plog"))
        .expect("plog")
        .flatten()
        .map(|e| e.path())
        .collect();
    segs.sort();
    let victim = segs.last().expect("a segment");
    let mut bytes = std::fs::read(victim).expect("read");
    // The frame of the transaction with client id t2-150.
    let at = bytes
        .windows(6)
        .position(|w| w == b"t2-150")
        .expect("its frame");
    bytes[at + 3] ^= 0x40;
    std::fs::write(victim, &bytes).expect("flip");
    std::fs::remove_dir_all(data.join("store")).expect("lose the store");
    // Re-applying needs a recovery to the last good LSN.
    let e = recover_with(
        &data,
        None,
        Some(&tmp.path().join("x")),
        Until::End,
        true,
        &mut |_| {},
    )
    .expect_err("refused");
    assert!(format!("{e:#}").contains("--to-last-good"), "{e:#}");
    let r = recover_with(
        &data,
        None,
        Some(&tmp.path().join("r")),
        Until::LastGood,
        true,
        &mut |_| {},
    )
    .expect("recover to the last good LSN, re-applying");
    let ra = r.reapplied.clone().expect("re-applied");
    // The model: from the state at the last good LSN, every commit after
    // the damaged one, in order, where the record holds its before-image.
    let hist = hist.lock().expect("lock").clone();
    let damaged = hist
        .iter()
        .map(|c| c.0)
        .find(|l| *l > r.lsn)
        .expect("a damaged commit");
    let mut want = state_at(&hist, MASTER, r.lsn);
    let (mut applied, mut refused) = (Vec::new(), Vec::new());
    for (lsn, _, t) in hist.iter().filter(|c| c.0 > damaged) {
        let (_, isn, after) = &t[0];
        let before = state_at(&hist, MASTER, Lsn(lsn.0 - 1)).get(isn).cloned();
        if want.get(isn) == before.as_ref() {
            match after {
                Some(b) => want.insert(*isn, b.clone()),
                None => want.remove(isn),
            };
            applied.push(*lsn);
        } else {
            refused.push(*lsn);
        }
    }
    assert!(!applied.is_empty() && !refused.is_empty(), "{ra:?}");
    assert_eq!(
        ra.done.iter().map(|d| d.0).collect::<Vec<_>>(),
        applied,
        "{ra:?}"
    );
    assert_eq!(
        ra.conflicts.iter().map(|c| c.lsn).collect::<Vec<_>>(),
        refused
    );
    assert!(ra.skipped.is_empty(), "{ra:?}");
    let (got, _) = Database::open(&tmp.path().join("r")).expect("opens");
    assert_eq!(content(&got, MASTER), want);
    // Re-applied as new transactions after the recovered LSN: each logged
    // for its master's replicates (one log record a change), each under
    // its client id.
    let first = ra.done.first().expect("one").1;
    assert!(first > r.lsn, "{ra:?}");
    // (The last transaction changed record 5 twice, which the damaged one
    // did not touch: it was re-applied last, both changes.)
    let (_, new_lsn) = ra.done[ra.done.len() - 1];
    assert_eq!(got.committed_id("twice").expect("ids"), Some(new_lsn));
    assert_eq!(got.committed_id("t2-150").expect("ids"), None);
    // Its log holds a record for every change up to the recovered LSN and
    // one for every change re-applied (the twice-changed record: two).
    let kept: u64 = hist
        .iter()
        .filter(|c| c.0 <= r.lsn)
        .map(|c| if c.0 == hist[0].0 { 300 } else { 1 })
        .sum();
    let log = got.file_info(LOG).expect("log").meta.next_isn - 1;
    assert_eq!(log, kept + ra.done.len() as u64 + 1, "{ra:?}");
    got.close().expect("close");
}
