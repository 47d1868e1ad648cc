// The storage cases, included once per page-store engine by `../storage.rs`
// (`ENGINE` is the including module's).

use propagator::database::ReplicatedChange;
use propagator::medium::{MediumDir, MemDir};
use propagator::plog::format::segment_name;
use propagator::{Database, DbError, DbId, Fnr, Isn, LogOp, Options, Record, Role, Seq, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const MASTER: Fnr = Fnr(10);
const LOG: Fnr = Fnr(11);
const PLAIN: Fnr = Fnr(20);
const REPL: Fnr = Fnr(30);

fn rec(pairs: &[(&str, i64)]) -> Record {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::Int(*v)))
        .collect()
}

fn setup(db: &Database) {
    db.create_file(MASTER, "orders", Role::Plain)
        .expect("create master");
    db.define_master(MASTER, LOG).expect("define master");
    db.create_file(PLAIN, "notes", Role::Plain)
        .expect("create plain");
    db.create_file(REPL, "copy", Role::Replicate)
        .expect("create replicate");
}

fn fresh(dir: &Path) -> Database {
    Database::init_with_engine(dir, DbId(1), None, ENGINE).expect("init");
    let (db, _) = Database::open(dir).expect("open");
    setup(&db);
    db
}

fn dump(db: &Database, fnr: Fnr) -> BTreeMap<Isn, Record> {
    let mut out = BTreeMap::new();
    db.for_each_raw(fnr, Isn(0), |isn, b| {
        out.insert(isn, propagator::record::decode_record(b).expect("decodes"));
        Ok(true)
    })
    .expect("scan");
    out
}

fn dump_raw(db: &Database, fnr: Fnr) -> BTreeMap<Isn, Vec<u8>> {
    let mut out = BTreeMap::new();
    db.for_each_raw(fnr, Isn(0), |isn, b| {
        out.insert(isn, b.to_vec());
        Ok(true)
    })
    .expect("scan");
    out
}

/// Replays the master's log from empty; checks seqs are 1..=n without gaps
/// and each record's digest equals what the master had at that seq.
fn replay_log(db: &Database) -> BTreeMap<Isn, Record> {
    let mut state = BTreeMap::new();
    let mut expect_seq = 1;
    let mut meta = propagator::FileMeta::new(MASTER);
    db.for_each_log_record(MASTER, Seq(1), |r| {
        assert_eq!(r.seq, Seq(expect_seq), "log seq gap");
        expect_seq += 1;
        let cur = state
            .get(&r.isn)
            .map(|x| propagator::record::encode_record(x).expect("enc"));
        assert_eq!(
            cur, r.before,
            "before-image of seq {} is not the replayed state",
            r.seq
        );
        meta.change(r.isn, r.before.as_deref(), r.after.as_deref());
        assert_eq!(
            (meta.count, meta.digest),
            (r.master_count, r.master_digest),
            "digest at seq {}",
            r.seq
        );
        match &r.after {
            Some(a) => {
                state.insert(r.isn, propagator::record::decode_record(a).expect("dec"));
            }
            None => {
                state.remove(&r.isn);
            }
        }
        Ok(true)
    })
    .expect("log scan");
    state
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

#[test]
fn et_is_durable_and_visible_after_reopen() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let mut s = db.session();
    let isn = s.store(MASTER, None, rec(&[("qty", 3)])).expect("store");
    s.store(PLAIN, Some(Isn(5)), rec(&[("a", 1)]))
        .expect("store plain");
    let info = s.et(Some("t1".into())).expect("et");
    assert_eq!(info.seqs.get(&MASTER), Some(&(Seq(1), Seq(1))));
    drop(s);
    db.close().expect("close");
    let (db, report) = Database::open(t.path()).expect("reopen");
    assert!(report.clean, "{report:?}");
    assert_eq!(
        db.read(MASTER, isn).expect("read"),
        Some(rec(&[("qty", 3)]))
    );
    assert_eq!(
        db.read(PLAIN, Isn(5)).expect("read"),
        Some(rec(&[("a", 1)]))
    );
    assert!(db.check().expect("check").is_ok());
}

#[test]
fn bt_and_dropped_session_leave_no_trace() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let before = db.last_lsn();
    let mut s = db.session();
    s.store(MASTER, Some(Isn(1)), rec(&[("q", 1)]))
        .expect("store");
    assert_eq!(
        s.read(MASTER, Isn(1)).expect("own write"),
        Some(rec(&[("q", 1)]))
    );
    assert_eq!(
        db.read(MASTER, Isn(1)).expect("read"),
        None,
        "uncommitted write visible"
    );
    s.bt();
    drop(s);
    {
        let mut s2 = db.session();
        s2.store(MASTER, Some(Isn(2)), rec(&[("q", 2)]))
            .expect("store");
        // dropped without ET
    }
    assert_eq!(db.last_lsn(), before);
    assert!(dump(&db, MASTER).is_empty());
    assert!(dump(&db, LOG).is_empty());
    db.close().expect("close");
    let (db, _) = Database::open(t.path()).expect("reopen");
    assert!(dump(&db, MASTER).is_empty());
    assert!(dump(&db, LOG).is_empty());
}

#[test]
fn duplicate_transaction_id_is_refused_with_original_lsn_even_after_reopen() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let mut s = db.session();
    s.store(MASTER, None, rec(&[("q", 1)])).expect("store");
    let first = s.et(Some("order-42".into())).expect("et");
    s.store(MASTER, None, rec(&[("q", 2)])).expect("store");
    match s.et(Some("order-42".into())) {
        Err(DbError::AlreadyCommitted { id, lsn }) => {
            assert_eq!(id, "order-42");
            assert_eq!(lsn, first.lsn);
        }
        other => panic!("expected AlreadyCommitted, got {other:?}"),
    }
    assert_eq!(
        dump(&db, MASTER).len(),
        1,
        "the refused transaction left a trace"
    );
    drop(s);
    db.simulate_crash();
    let (db, _) = Database::open(t.path()).expect("reopen");
    let mut s = db.session();
    s.store(MASTER, None, rec(&[("q", 3)])).expect("store");
    assert!(
        matches!(s.et(Some("order-42".into())), Err(DbError::AlreadyCommitted { lsn, .. }) if lsn == first.lsn)
    );
    assert_eq!(dump(&db, MASTER).len(), 1);
}

#[test]
fn rerun_failing_on_its_own_committed_effects_is_answered_already_committed() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let mut s = db.session();
    s.store(MASTER, Some(Isn(5)), rec(&[("q", 1)]))
        .expect("store");
    let first = s.et(Some("rerun-1".into())).expect("et");
    // The rerun (its acknowledgement was lost) fails on its own record...
    assert!(s.store(MASTER, Some(Isn(5)), rec(&[("q", 1)])).is_err());
    // ...and its ET says what happened, by id.
    assert!(
        matches!(s.et(Some("rerun-1".into())), Err(DbError::AlreadyCommitted { lsn, .. }) if lsn == first.lsn)
    );
    // An id never committed still reports the abort, and the session is clean after it.
    assert!(s.store(MASTER, Some(Isn(5)), rec(&[("q", 1)])).is_err());
    assert!(matches!(
        s.et(Some("rerun-2".into())),
        Err(DbError::Aborted(_))
    ));
    assert!(!s.in_transaction());
    assert_eq!(dump(&db, MASTER).len(), 1);
}

#[test]
fn command_errors_abort_the_transaction_and_leave_no_trace() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let mut s = db.session();
    s.store(MASTER, Some(Isn(1)), rec(&[("q", 1)]))
        .expect("store");
    s.et(None).expect("et");
    let lsn = db.last_lsn();
    type Case = fn(&mut propagator::Session) -> Result<(), DbError>;
    let cases: Vec<(&str, Case)> = vec![
        ("store on existing isn", |s| {
            s.store(MASTER, Some(Isn(1)), rec(&[("q", 9)])).map(|_| ())
        }),
        ("update of missing isn", |s| {
            s.update(MASTER, Isn(99), rec(&[("q", 9)]))
        }),
        ("delete of missing isn", |s| s.delete(MASTER, Isn(99))),
        ("unknown file", |s| {
            s.store(Fnr(77), None, rec(&[("q", 9)])).map(|_| ())
        }),
        ("write to a replicate file", |s| {
            s.store(REPL, None, rec(&[("q", 9)])).map(|_| ())
        }),
        ("write to a log file", |s| {
            s.store(LOG, None, rec(&[("q", 9)])).map(|_| ())
        }),
        ("isn zero", |s| {
            s.store(MASTER, Some(Isn(0)), rec(&[("q", 9)])).map(|_| ())
        }),
    ];
    for (what, case) in cases {
        let mut s = db.session();
        s.store(MASTER, Some(Isn(50)), rec(&[("pending", 1)]))
            .expect("first command");
        let err = case(&mut s).expect_err(what);
        assert!(!err.to_string().is_empty());
        assert!(
            matches!(s.et(None), Err(DbError::Aborted(_))),
            "{what}: ET after an error must fail"
        );
        assert_eq!(db.last_lsn(), lsn, "{what}: something was committed");
        assert_eq!(
            db.read(MASTER, Isn(50)).expect("read"),
            None,
            "{what}: left a trace"
        );
    }
    let errs = [
        db.session()
            .store(REPL, None, rec(&[("q", 1)]))
            .expect_err("replicate"),
        db.session()
            .update(MASTER, Isn(99), rec(&[("q", 1)]))
            .expect_err("missing"),
    ];
    assert!(
        errs[0].to_string().contains("replicate file"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].to_string().contains("does not exist"),
        "{}",
        errs[1]
    );
    assert_eq!(replay_log(&db), dump(&db, MASTER));
}

/// A store of an isn above every isn the file has held is not looked up at
/// ET (it cannot exist); one that another commit has taken meanwhile must
/// still be refused there, whichever way each side got its isn.
#[test]
fn an_open_transaction_never_holds_more_than_its_byte_limit() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let big = |i: i64| {
        let mut r = rec(&[("q", i)]);
        r.insert("b".into(), Value::Bytes(vec![7u8; (1 << 20) - 64]));
        r
    };
    let mut s = db.session();
    let limit = propagator::database::MAX_TXN_BYTES >> 20;
    let mut refused_at = None;
    for i in 0..(limit as i64 + 8) {
        match s.store(MASTER, None, big(i)) {
            Ok(_) => {}
            Err(DbError::TooLarge(m)) => {
                assert!(m.contains("bytes of records"), "{m}");
                refused_at = Some(i);
                break;
            }
            Err(e) => panic!("store {i}: {e}"),
        }
    }
    let at = refused_at.expect("a store over the limit is refused when it is made, not at ET");
    assert!(at as usize <= limit + 1, "refused only at store {at}");
    // The transaction is gone: nothing of it is held or committed.
    assert!(matches!(s.et(None), Err(DbError::Aborted(_))));
    s.bt();
    assert!(dump(&db, MASTER).is_empty());
    // The session works again, counting from nothing.
    s.store(MASTER, None, big(1)).expect("a store after BT");
    s.et(None).expect("commits");
    assert_eq!(dump(&db, MASTER).len(), 1);
}

#[test]
fn stores_racing_for_one_isn_are_refused_at_et_and_leave_no_trace() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let refused = |r: Result<propagator::CommitInfo, DbError>, isn: u64| match r {
        Err(DbError::RecordExists { fnr, isn: i }) => {
            assert_eq!((fnr, i), (MASTER, Isn(isn)));
        }
        other => panic!("ET of a store on taken isn {isn}: {other:?}"),
    };
    // Both name an isn far above the file's: both pass the session's check.
    let (mut a, mut b) = (db.session(), db.session());
    a.store(MASTER, Some(Isn(1000)), rec(&[("q", 1)]))
        .expect("a stores");
    b.store(MASTER, Some(Isn(1000)), rec(&[("q", 2)]))
        .expect("b stores");
    a.et(None).expect("a commits");
    let lsn = db.last_lsn();
    refused(b.et(None), 1000);
    assert_eq!(db.last_lsn(), lsn, "the refused ET committed something");
    // An isn handed out by the engine, then taken by an explicit store.
    let mut c = db.session();
    let given = c.store(MASTER, None, rec(&[("q", 3)])).expect("c stores");
    assert_eq!(given, Isn(1001), "the next isn follows the highest");
    let mut d = db.session();
    d.store(MASTER, Some(given), rec(&[("q", 4)]))
        .expect("d stores");
    d.et(None).expect("d commits");
    refused(c.et(None), 1001);
    // The other way round: an explicit store first, the engine's isn after.
    let mut e = db.session();
    e.store(MASTER, Some(Isn(1002)), rec(&[("q", 5)]))
        .expect("e stores");
    let mut f = db.session();
    assert_eq!(
        f.store(MASTER, None, rec(&[("q", 6)])).expect("f stores"),
        Isn(1002)
    );
    e.et(None).expect("e commits");
    refused(f.et(None), 1002);
    // The largest isn a store may name: one store there cannot use up the
    // engine's numbering, which goes on above it; above it, a store is
    // refused, naming the limit.
    let max = propagator::database::MAX_STORE_ISN;
    let (mut h, mut i) = (db.session(), db.session());
    h.store(MASTER, Some(Isn(max)), rec(&[("q", 9)]))
        .expect("h stores");
    i.store(MASTER, Some(Isn(max)), rec(&[("q", 10)]))
        .expect("i stores");
    h.et(None).expect("h commits");
    refused(i.et(None), max);
    let mut k = db.session();
    assert_eq!(
        k.store(MASTER, None, rec(&[("q", 11)])).expect("k stores"),
        Isn(max + 1),
        "the engine's numbering goes on above the largest named isn"
    );
    k.et(None).expect("k commits");
    for above in [max + 2, u64::MAX - 1, u64::MAX] {
        match db.session().store(MASTER, Some(Isn(above)), rec(&[("q", 12)])) {
            Err(DbError::IsnTooLarge { isn, max: m, .. }) => {
                assert_eq!((isn, m), (Isn(above), max))
            }
            other => panic!("a store at isn {above} was not refused: {other:?}"),
        }
    }
    // One transaction storing the same new isn twice is refused at once.
    let mut g = db.session();
    g.store(MASTER, Some(Isn(2000)), rec(&[("q", 7)]))
        .expect("g stores");
    assert!(matches!(
        g.store(MASTER, Some(Isn(2000)), rec(&[("q", 8)])),
        Err(DbError::RecordExists { .. })
    ));
    let got = dump(&db, MASTER);
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        vec![
            (Isn(1000), rec(&[("q", 1)])),
            (Isn(1001), rec(&[("q", 4)])),
            (Isn(1002), rec(&[("q", 5)])),
            (Isn(max), rec(&[("q", 9)])),
            (Isn(max + 1), rec(&[("q", 11)])),
        ]
    );
    assert_eq!(replay_log(&db), dump(&db, MASTER));
    assert!(db.check().expect("check").is_ok());
}

#[test]
fn every_master_change_writes_a_gap_free_log_record_with_the_master_digest() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let mut s = db.session();
    for i in 1..=20 {
        s.store(
            MASTER,
            Some(Isn(i)),
            rec(&[("q", i as i64), ("grp", (i % 4) as i64)]),
        )
        .expect("store");
        if i % 3 == 0 {
            s.update(MASTER, Isn(i), rec(&[("q", 100)]))
                .expect("update");
        }
        if i % 5 == 0 {
            s.delete(MASTER, Isn(i - 1)).expect("delete");
        }
        s.et(None).expect("et");
    }
    let mut null_patch = Record::new();
    null_patch.insert("grp".into(), Value::Null);
    s.update(MASTER, Isn(2), null_patch).expect("remove field");
    s.store(MASTER, None, rec(&[("q", 1)]))
        .expect("assigned isn");
    let info = s.et(None).expect("et");
    let (first, last) = info.seqs[&MASTER];
    assert_eq!(last.0 - first.0, 1, "two changes, two seqs");
    assert_eq!(
        db.read(MASTER, Isn(2)).expect("read"),
        Some(rec(&[("q", 2)]))
    );
    let mut parts = Vec::new();
    db.for_each_log_record(MASTER, first, |r| {
        parts.push((r.part, r.parts, r.op));
        Ok(true)
    })
    .expect("log");
    assert_eq!(parts, vec![(1, 2, LogOp::Update), (2, 2, LogOp::Store)]);
    assert_eq!(replay_log(&db), dump(&db, MASTER));
    let metas: BTreeMap<Fnr, _> = db
        .files()
        .into_iter()
        .map(|f| (f.def.fnr, f.meta))
        .collect();
    assert_eq!(metas[&LOG].count, last.0, "one log record per change");
    assert!(db.check().expect("check").is_ok());
}

#[test]
fn replay_redoes_commits_after_the_page_store_fell_behind() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let mut s = db.session();
    for i in 1..=10 {
        s.store(MASTER, Some(Isn(i)), rec(&[("q", i as i64)]))
            .expect("store");
        s.et(Some(format!("a{i}"))).expect("et");
    }
    drop(s);
    db.close().expect("close");
    let old_store = t.path().join("old-store");
    copy_dir(&t.path().join("store"), &old_store);
    let (db, _) = Database::open(t.path()).expect("reopen");
    let mut s = db.session();
    for i in 1..=10 {
        s.update(MASTER, Isn(i), rec(&[("q", 1000 + i as i64)]))
            .expect("update");
        if i % 2 == 0 {
            s.delete(MASTER, Isn(i)).expect("delete");
        }
        s.et(Some(format!("b{i}"))).expect("et");
    }
    drop(s);
    let want = dump(&db, MASTER);
    let want_log = dump_raw(&db, LOG);
    db.close().expect("close");
    // sled loses everything since the copy: the protection log must redo it.
    std::fs::remove_dir_all(t.path().join("store")).expect("rm");
    std::fs::rename(&old_store, t.path().join("store")).expect("mv");
    let (db, report) = Database::open(t.path()).expect("reopen after rollback");
    assert_eq!(report.replayed, 10, "{report:?}");
    assert!(report.damaged.is_empty(), "{report:?}");
    assert_eq!(dump(&db, MASTER), want);
    assert_eq!(dump_raw(&db, LOG), want_log);
    assert!(matches!(
        db.session().et(Some("b3".into())),
        Err(DbError::AlreadyCommitted { .. })
    ));
    assert!(db.check().expect("check").is_ok());
    // A store deleted outright is rebuilt from the whole log.
    db.close().expect("close");
    std::fs::remove_dir_all(t.path().join("store")).expect("rm");
    let (db, report) = Database::open(t.path()).expect("rebuild");
    assert!(report.replayed > 20);
    assert_eq!(dump(&db, MASTER), want);
}

/// Opens a database whose protection log lives in a [`MemDir`] seeded from
/// the on-disk segment `init` wrote.
fn mem_db(dir: &Path, segment_size: u64) -> MemDir {
    Database::init_with_engine(dir, DbId(1), Some(segment_size), ENGINE).expect("init");
    let mem = MemDir::new();
    let name = segment_name(1);
    mem.insert(
        &name,
        std::fs::read(dir.join("plog").join(&name)).expect("segment"),
    );
    mem
}

fn open_mem(dir: &Path, mem: &MemDir) -> Result<(Database, propagator::OpenReport), DbError> {
    Database::open_with(
        dir,
        Arc::new(mem.clone()) as Arc<dyn MediumDir>,
        Options::default(),
    )
}

#[test]
fn power_loss_images_keep_every_synced_commit_and_truncate_the_torn_tail() {
    const SEEDS: u64 = 24;
    let (mut torn, mut kept) = (0, 0);
    for seed in 0..SEEDS {
        let t = tempfile::tempdir().expect("tempdir");
        let mem = mem_db(t.path(), 8192);
        let (db, _) = open_mem(t.path(), &mem).expect("open");
        setup(&db);
        let mut acked = BTreeMap::new();
        let mut s = db.session();
        for i in 1..=40u64 {
            s.store(
                MASTER,
                Some(Isn(i)),
                rec(&[("q", i as i64), ("pad", seed as i64)]),
            )
            .expect("store");
            s.store(PLAIN, Some(Isn(i)), rec(&[("q", i as i64)]))
                .expect("store");
            s.et(Some(format!("t{i}"))).expect("et");
            acked.insert(Isn(i), rec(&[("q", i as i64), ("pad", seed as i64)]));
        }
        // One more whose sync fails: written, never acknowledged.
        mem.fail_next_sync();
        s.store(MASTER, Some(Isn(41)), rec(&[("q", 41)]))
            .expect("store");
        s.store(PLAIN, Some(Isn(41)), rec(&[("q", 41)]))
            .expect("store");
        assert!(matches!(s.et(None), Err(DbError::OutcomeUnknown(_))));
        assert!(
            matches!(s.et(None), Err(DbError::Poisoned(_))),
            "a poisoned database must refuse commits"
        );
        drop(s);
        let image = mem.crash_image(seed);
        db.simulate_crash();
        let (db, report) = open_mem(t.path(), &image).expect("open crash image");
        assert!(report.damaged.is_empty(), "seed {seed}: {report:?}");
        let master = dump(&db, MASTER);
        let plain = dump(&db, PLAIN);
        for (isn, r) in &acked {
            assert_eq!(
                master.get(isn),
                Some(r),
                "seed {seed}: acknowledged commit {isn} lost"
            );
        }
        // The unacknowledged one is all there or not there at all.
        assert_eq!(
            master.contains_key(&Isn(41)),
            plain.contains_key(&Isn(41)),
            "seed {seed}: half a transaction"
        );
        assert_eq!(master.len(), plain.len());
        assert_eq!(replay_log(&db), master, "seed {seed}");
        assert!(db.check().expect("check").is_ok(), "seed {seed}");
        if report.torn_tail.is_some() {
            torn += 1;
        }
        if master.contains_key(&Isn(41)) {
            kept += 1;
        }
        // And the database takes new commits after recovery, which survive
        // the next power loss with nothing stale resurfacing behind them.
        let mut s = db.session();
        s.store(MASTER, Some(Isn(100)), rec(&[("q", 1)]))
            .expect("store");
        s.et(None).expect("et after recovery");
        drop(s);
        let before = dump(&db, MASTER);
        db.simulate_crash();
        let (db, _) = open_mem(t.path(), &image.synced_image()).expect("second open");
        assert_eq!(dump(&db, MASTER), before, "seed {seed}");
        assert!(db.check().expect("check").is_ok(), "seed {seed}");
    }
    assert!(
        torn > 0,
        "no image had a torn tail: the test proves nothing"
    );
    assert!(
        kept > 0 && kept < SEEDS,
        "the unsynced commit should survive in some images only ({kept}/{SEEDS})"
    );
}

/// Where the frames of a segment end: segments are preallocated with zeros.
/// A fresh database on an in-memory medium (1 MiB segments), set up.
fn fresh_mem(dir: &Path) -> (MemDir, Database) {
    let mem = mem_db(dir, 1 << 20);
    let (db, _) = open_mem(dir, &mem).expect("open");
    setup(&db);
    (mem, db)
}

fn data_end(mem: &MemDir, name: &str) -> usize {
    let b = mem.bytes(name).expect("segment");
    b.iter().rposition(|x| *x != 0).map_or(0, |i| i + 1)
}

fn flip(mem: &MemDir, name: &str, offset: usize) {
    let mut b = mem.bytes(name).expect("segment");
    b[offset] ^= 0x40;
    mem.insert(name, b);
}

fn committed_mem_db(dir: &Path, n: u64, clean: bool) -> MemDir {
    let mem = mem_db(dir, 1 << 20);
    let (db, _) = open_mem(dir, &mem).expect("open");
    setup(&db);
    let mut s = db.session();
    for i in 1..=n {
        s.store(MASTER, Some(Isn(i)), rec(&[("q", i as i64)]))
            .expect("store");
        s.et(None).expect("et");
    }
    drop(s);
    if clean {
        db.close().expect("close");
    } else {
        db.simulate_crash();
    }
    mem
}

#[test]
fn flipped_byte_in_the_middle_of_the_log_stops_open_naming_segment_and_offset() {
    let t = tempfile::tempdir().expect("tempdir");
    let mem = committed_mem_db(t.path(), 30, true);
    let name = segment_name(1);
    let len = data_end(&mem, &name);
    flip(&mem, &name, len / 2);
    // Also damage at the very end is named (here: past the last commit a
    // clean checkpoint follows, so it is mid-log damage, not a torn tail).
    let err = open_mem(t.path(), &mem).err().expect("open must fail");
    let msg = err.to_string();
    assert!(msg.contains("segment 1") && msg.contains("offset"), "{msg}");
    assert!(
        matches!(
            err,
            DbError::Log(propagator::plog::LogError::Corrupt { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn flipped_byte_in_the_last_committed_frame_is_named_not_truncated() {
    let t = tempfile::tempdir().expect("tempdir");
    let mem = committed_mem_db(t.path(), 30, false);
    let name = segment_name(1);
    let len = data_end(&mem, &name);
    flip(&mem, &name, len - 3);
    let err = open_mem(t.path(), &mem).err().expect("open must fail");
    assert!(
        matches!(
            err,
            DbError::Log(propagator::plog::LogError::TailCommitted { segment: 1, .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("offset"), "{err}");
}

#[test]
fn preallocated_space_is_zeros_and_a_flipped_byte_there_loses_nothing() {
    let t = tempfile::tempdir().expect("tempdir");
    let mem = committed_mem_db(t.path(), 30, false);
    let name = segment_name(1);
    let end = data_end(&mem, &name);
    let len = mem.bytes(&name).expect("seg").len();
    assert!(
        len > end + 4096,
        "segment is preallocated ({len} bytes, data to {end})"
    );
    // A stray non-zero byte in the preallocated space is not a commit: it
    // is reported as a torn tail, zeroed, and every commit is kept.
    flip(&mem, &name, end + 100);
    let (db, report) = open_mem(t.path(), &mem).expect("open");
    let torn = report.torn_tail.expect("the stray byte is reported");
    assert_eq!(torn.offset as usize, end);
    assert_eq!(torn.bytes_dropped, 101);
    assert_eq!(dump(&db, MASTER).len(), 30);
    assert!(mem.bytes(&name).expect("seg")[end..]
        .iter()
        .all(|b| *b == 0));
    // New commits go where the stray byte was, and survive another open.
    let mut s = db.session();
    s.store(MASTER, Some(Isn(31)), rec(&[("q", 31)]))
        .expect("store");
    s.et(None).expect("et");
    drop(s);
    db.simulate_crash();
    let (db, report) = open_mem(t.path(), &mem).expect("reopen");
    assert!(report.torn_tail.is_none());
    assert_eq!(dump(&db, MASTER).len(), 31);
}

#[test]
fn a_zeroed_frame_in_the_middle_of_the_log_is_damage_not_the_end() {
    let t = tempfile::tempdir().expect("tempdir");
    let mem = committed_mem_db(t.path(), 30, true);
    let name = segment_name(1);
    let mut b = mem.bytes(&name).expect("seg");
    // Zero a whole frame header in the middle: it must not read as the end
    // of the log, since committed frames follow it.
    let mid = data_end(&mem, &name) / 2;
    let at = mid
        + b[mid..]
            .windows(4)
            .position(|w| w == b"ETPF")
            .expect("a frame");
    b[at..at + 12].fill(0);
    mem.insert(&name, b);
    let err = open_mem(t.path(), &mem).err().expect("open must fail");
    assert!(
        matches!(err, DbError::Log(propagator::plog::LogError::Corrupt { offset, .. }) if offset as usize == at),
        "{err:?}"
    );
}

#[test]
fn damaged_page_store_directory_is_an_error_naming_it() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    db.close().expect("close");
    let store = t.path().join("store");
    for e in std::fs::read_dir(&store).expect("store dir") {
        let p = e.expect("entry").path();
        if p.is_file() {
            std::fs::write(&p, b"garbage garbage garbage").expect("damage");
        }
    }
    let err = Database::open(t.path()).err().expect("open must fail");
    let msg = err.to_string();
    assert!(msg.contains(&store.display().to_string()), "{msg}");
}

#[test]
fn record_changed_behind_the_engine_is_reported_damaged_never_used() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let mut s = db.session();
    for i in 1..=5 {
        s.store(MASTER, Some(Isn(i)), rec(&[("q", i as i64)]))
            .expect("store");
        s.store(PLAIN, Some(Isn(i)), rec(&[("q", i as i64)]))
            .expect("store");
        s.et(None).expect("et");
    }
    drop(s);
    db.close().expect("close");
    {
        // Edit one record directly in the page store, as damage would.
        let store =
            propagator::store::PageStore::open(&t.path().join("store"), ENGINE, 1 << 20, 1 << 20).expect("store");
        let applied = store.applied_lsn().expect("lsn");
        let bytes = propagator::record::encode_record(&rec(&[("q", 999)])).expect("enc");
        store
            .apply(&propagator::store::StoreBatch {
                applied,
                records: vec![(PLAIN, Isn(3), Some(bytes))],
                ..Default::default()
            })
            .expect("tamper");
        store.flush().expect("flush");
    }
    // A clean open does not rescan, but `check` does.
    let (db, _) = Database::open(t.path()).expect("open");
    let report = db.check().expect("check");
    assert!(!report.is_ok());
    let bad: Vec<_> = report
        .files
        .iter()
        .filter(|f| f.problem.is_some())
        .map(|f| f.fnr)
        .collect();
    assert_eq!(bad, vec![PLAIN]);
    // After an unclean stop the open itself finds it and refuses the file.
    db.simulate_crash();
    let (db, report) = Database::open(t.path()).expect("open");
    assert_eq!(
        report.damaged.iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![PLAIN],
        "{report:?}"
    );
    assert!(matches!(
        db.read(PLAIN, Isn(1)),
        Err(DbError::FileDamaged { .. })
    ));
    assert!(matches!(
        db.session().store(PLAIN, None, rec(&[("q", 1)])),
        Err(DbError::FileDamaged { .. })
    ));
    // Undamaged files keep working.
    assert_eq!(
        db.read(MASTER, Isn(3)).expect("read"),
        Some(rec(&[("q", 3)]))
    );
}

#[test]
fn segments_rotate_and_recovery_reads_across_them() {
    let t = tempfile::tempdir().expect("tempdir");
    Database::init_with_engine(t.path(), DbId(3), Some(4096), ENGINE).expect("init");
    let (db, _) = Database::open(t.path()).expect("open");
    setup(&db);
    let mut s = db.session();
    for i in 1..=200u64 {
        s.store(MASTER, Some(Isn(i)), rec(&[("q", i as i64)]))
            .expect("store");
        s.et(None).expect("et");
    }
    drop(s);
    let want = dump(&db, MASTER);
    db.simulate_crash();
    let segs = std::fs::read_dir(t.path().join("plog"))
        .expect("plog")
        .count();
    assert!(segs >= 3, "only {segs} segments");
    let (db, report) = Database::open(t.path()).expect("reopen");
    assert!(report.rescanned && report.damaged.is_empty(), "{report:?}");
    assert_eq!(dump(&db, MASTER), want);
    let check = db.check().expect("check");
    assert!(check.is_ok(), "{check:?}");
    assert_eq!(check.segments as usize, segs);
}

#[test]
fn a_second_open_of_a_database_in_use_is_refused() {
    let t = tempfile::tempdir().expect("tempdir");
    let _db = fresh(t.path());
    assert!(matches!(
        Database::open(t.path()),
        Err(DbError::InUse { .. })
    ));
}

/// A replicate file (40) and its confirmation file (41), and the
/// confirmation record of a seq.
#[allow(clippy::type_complexity)]
fn replicate_files(db: &Database) -> (Fnr, impl Fn(i64) -> (Fnr, Isn, Record)) {
    let (rep, conf) = (Fnr(40), Fnr(41));
    db.create_file(rep, "rep", Role::Replicate)
        .expect("replicate");
    db.create_file(conf, "conf", Role::Confirmation)
        .expect("confirmation");
    let confirm = move |seq: i64| {
        let mut r = Record::new();
        r.insert("seq".into(), Value::Int(seq));
        (conf, Isn(40), r)
    };
    (rep, confirm)
}

#[test]
fn replicated_batches_must_follow_the_confirmation_and_hold_valid_records() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let (rep, confirm) = replicate_files(&db);
    let bytes = |q: i64| propagator::record::encode_record(&rec(&[("q", q)])).expect("enc");
    db.apply_replicated(
        rep,
        Seq(0),
        vec![ReplicatedChange::new(Isn(1), None, Some(bytes(1)))],
        confirm(5),
    )
    .expect("first batch follows seq 0");
    // A stale batch (from a replaced link) that also claims to follow seq 0.
    let err = db
        .apply_replicated(
            rep,
            Seq(0),
            vec![ReplicatedChange::new(Isn(2), None, Some(bytes(2)))],
            confirm(3),
        )
        .expect_err("out of sequence");
    assert!(
        matches!(
            err,
            DbError::OutOfSequence {
                confirmed: Seq(5),
                expected: Seq(0),
                ..
            }
        ),
        "{err:?}"
    );
    // Undecodable bytes and isn 0 are refused; nothing of those batches lands.
    let err = db
        .apply_replicated(
            rep,
            Seq(5),
            vec![ReplicatedChange::new(Isn(2), None, Some(vec![0xc1, 0xff]))],
            confirm(6),
        )
        .expect_err("bad record");
    assert!(matches!(err, DbError::BadRecord { .. }), "{err:?}");
    let err = db
        .apply_replicated(
            rep,
            Seq(5),
            vec![ReplicatedChange::new(Isn(0), None, Some(bytes(0)))],
            confirm(6),
        )
        .expect_err("isn 0");
    assert!(matches!(err, DbError::ZeroIsn(_)), "{err:?}");
    assert_eq!(dump(&db, rep).len(), 1);
    let c = db.read(Fnr(41), Isn(40)).expect("read").expect("confirmation");
    assert_eq!(c.get("seq"), Some(&Value::Int(5)));
    db.apply_replicated(
        rep,
        Seq(5),
        vec![ReplicatedChange::new(Isn(2), None, Some(bytes(2)))],
        confirm(6),
    )
    .expect("the next batch in sequence");
    assert_eq!(dump(&db, rep).len(), 2);
}

/// Large dense replicate batches check their before-images against one
/// scan of the page store: a diverged record in the batch is still found,
/// whether the record sits in the page store or only in the overlay (a
/// batch right behind another), and right ones apply.
#[test]
fn dense_replicate_batches_still_find_a_diverged_record() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let (rep, confirm) = replicate_files(&db);
    let bytes = |q: i64| propagator::record::encode_record(&rec(&[("q", q)])).expect("enc");
    let inserts = |from: u64, n: u64| -> Vec<ReplicatedChange> {
        (from..from + n)
            .map(|i| ReplicatedChange::new(Isn(i), None, Some(bytes(i as i64))))
            .collect()
    };
    db.apply_replicated(rep, Seq(0), inserts(1, 100), confirm(1))
        .expect("a first dense batch");
    db.wait_applied().expect("applied");
    // In the page store: an insert over an existing record is refused.
    let mut batch = inserts(101, 50);
    batch.push(ReplicatedChange::new(Isn(60), None, Some(bytes(0))));
    let err = db
        .apply_replicated(rep, Seq(1), batch, confirm(2))
        .expect_err("record 60 exists");
    assert!(
        matches!(err, DbError::ReplicateDiverged { isn: Isn(60), .. }),
        "{err:?}"
    );
    // Updates with the right before-images apply; one with a wrong one is
    // refused, also while the records are only in the overlay.
    let updates = |from: u64, n: u64, was: i64, now: i64| -> Vec<ReplicatedChange> {
        (from..from + n)
            .map(|i| {
                ReplicatedChange::new(Isn(i), Some(bytes(i as i64 + was)), Some(bytes(i as i64 + now)))
            })
            .collect()
    };
    db.apply_replicated(rep, Seq(1), updates(1, 100, 0, 1000), confirm(2))
        .expect("right before-images");
    let mut wrong = updates(1, 100, 1000, 2000);
    wrong[70] = ReplicatedChange::new(Isn(71), Some(bytes(71)), Some(bytes(0)));
    let err = db
        .apply_replicated(rep, Seq(2), wrong, confirm(3))
        .expect_err("record 71 was updated");
    assert!(
        matches!(err, DbError::ReplicateDiverged { isn: Isn(71), .. }),
        "{err:?}"
    );
    db.apply_replicated(rep, Seq(2), updates(1, 100, 1000, 2000), confirm(3))
        .expect("the overlay's images");
    db.wait_applied().expect("applied");
    assert_eq!(dump(&db, rep).len(), 100);
    assert_eq!(
        db.read(rep, Isn(71)).expect("read"),
        Some(rec(&[("q", 2071)]))
    );
}

#[test]
fn a_restore_that_has_not_proved_its_last_chunk_leaves_the_file_damaged_across_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let db = fresh(&dir);
    let mut s = db.session();
    for i in 1..=6 {
        s.store(PLAIN, Some(Isn(i)), rec(&[("v", i as i64)]))
            .expect("store");
    }
    s.et(None).expect("et");
    drop(s);
    let want = db.file_info(PLAIN).expect("info").meta;
    let bytes = dump_raw(&db, PLAIN);
    // Changed after the "copy": the restore has records to write back.
    let mut s = db.session();
    for i in 1..=6 {
        s.update(PLAIN, Isn(i), rec(&[("v", 100 + i as i64)]))
            .expect("update");
    }
    s.et(None).expect("et");
    drop(s);
    db.begin_restore(PLAIN, "a test restore").expect("begin");
    let damaged = db.file_info(PLAIN).expect("info").damaged;
    assert!(
        damaged
            .as_ref()
            .is_some_and(|d| d.reason.contains("a test restore") && d.partner.is_none()),
        "{damaged:?}"
    );
    // Client writes are refused meanwhile; only the restore writes.
    let mut s = db.session();
    assert!(s.store(PLAIN, Some(Isn(50)), rec(&[("v", 50)])).is_err());
    drop(s);
    let first: Vec<(Isn, Vec<u8>)> = bytes
        .iter()
        .filter(|(i, _)| i.0 <= 3)
        .map(|(i, b)| (*i, b.clone()))
        .collect();
    let (_, stats) = db
        .restore_range(PLAIN, Isn(1), Some(Isn(4)), first, None)
        .expect("first chunk");
    assert_eq!(stats.written, 3, "the chunk wrote the copy's records back");
    db.close().expect("close");
    // Interrupted here: still damaged after a reopen, naming why.
    let (db, report) = Database::open(&dir).expect("reopen");
    assert!(
        report
            .damaged
            .iter()
            .any(|(f, r)| *f == PLAIN && r.contains("has not finished")),
        "{:?}",
        report.damaged
    );
    // Nothing but a restore (or an explicit rebase) may write it now, and
    // a log refresh refuses a master in that state (checked in recover_ops).
    let mut s = db.session();
    assert!(s.store(PLAIN, Some(Isn(60)), rec(&[("v", 60)])).is_err());
    drop(s);
    // The restore runs again and proves its last chunk: intact, and stays so.
    db.begin_restore(PLAIN, "a test restore")
        .expect("begin again");
    let all: Vec<(Isn, Vec<u8>)> = bytes.into_iter().collect();
    // A last chunk must leave every record below the copy's next isn (new
    // isns are handed out from there without a lookup): one that stops
    // short of the end, or holds a record at or above it, writes nothing.
    let low = propagator::FileMeta {
        next_isn: 6,
        ..want
    };
    let lsn = db.last_lsn();
    for (to, meta, what) in [
        (
            Some(Isn(7)),
            want,
            "a last chunk that stops short of the end",
        ),
        (None, low, "a last chunk holding isn 6 with a next isn of 6"),
    ] {
        let err = db
            .restore_range(PLAIN, Isn(1), to, all.clone(), Some(meta))
            .expect_err(what);
        assert!(err.to_string().contains("next isn"), "{what}: {err}");
        assert_eq!(db.last_lsn(), lsn, "{what}: something was written");
    }
    db.restore_range(PLAIN, Isn(1), None, all, Some(want))
        .expect("last chunk");
    assert_eq!(db.file_info(PLAIN).expect("info").damaged, None);
    db.close().expect("close");
    let (db, report) = Database::open(&dir).expect("reopen");
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    assert_eq!(db.file_info(PLAIN).expect("info").meta.digest, want.digest);
}

#[test]
fn a_log_refresh_refuses_a_half_restored_master_and_a_seq_past_the_log_without_marking_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = fresh(&tmp.path().join("db"));
    let mut s = db.session();
    for i in 1..=4 {
        s.store(MASTER, Some(Isn(i)), rec(&[("v", i as i64)]))
            .expect("store");
    }
    s.et(None).expect("et");
    drop(s);
    // Restarting the log past its end is refused before anything is written.
    let e = db
        .refresh_log(MASTER, Some(Seq(99)))
        .expect_err("past the end");
    assert!(e.to_string().contains("ends at seq 4"), "{e}");
    assert_eq!(db.file_info(LOG).expect("info").damaged, None);
    // A refresh at the end keeps one base record at the master's level.
    let r = db.refresh_log(MASTER, None).expect("refresh");
    assert_eq!(r.base_seq, Seq(4));
    assert_eq!(db.file_info(LOG).expect("info").meta.count, 1);
    assert_eq!(db.file_info(LOG).expect("info").damaged, None);
    // A master whose restore has not finished is not taken as the level.
    db.begin_restore(MASTER, "a test restore").expect("begin");
    let e = db.refresh_log(MASTER, None).expect_err("half restored");
    assert!(e.to_string().contains("has not finished"), "{e}");
}

/// Joins a thread, failing (instead of hanging the run) past a deadline.
fn join_within<T>(what: &str, h: std::thread::JoinHandle<T>) -> T {
    wait_until(what, || h.is_finished());
    h.join().expect("thread")
}

/// Waits for `cond` up to a deadline; fails naming `what`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// One master change per ET from its own thread: the commit's LSN.
fn commit_one(db: &Database, isn: u64) -> Commit {
    let db = db.clone();
    std::thread::spawn(move || {
        let mut s = db.session();
        s.store(MASTER, Some(Isn(isn)), rec(&[("q", isn as i64)]))?;
        s.et(Some(format!("c{isn}"))).map(|i| i.lsn)
    })
}

type Commit = std::thread::JoinHandle<Result<propagator::Lsn, DbError>>;

/// Holds syncs, starts a commit of `leader` that leads and waits in its
/// sync, then queues one commit per isn of `queued` behind it. Syncs stay
/// held: the caller releases them.
fn queue_behind_held_sync(
    db: &Database,
    mem: &MemDir,
    leader: u64,
    queued: std::ops::RangeInclusive<u64>,
) -> (Commit, Vec<Commit>) {
    mem.hold_syncs(true);
    let first = commit_one(db, leader);
    wait_until("the leader's sync", || mem.syncs_held() == 1);
    let base = db.last_lsn();
    let rest: Vec<_> = queued.map(|i| commit_one(db, i)).collect();
    let n = rest.len() as u64;
    wait_until("the commits queued", || db.last_lsn().0 == base.0 + n);
    (first, rest)
}

#[test]
fn commits_queued_behind_a_sync_share_the_next_one() {
    let t = tempfile::tempdir().expect("tempdir");
    let (mem, db) = fresh_mem(t.path());
    let before = db.metrics();
    // The disk stalls: the first committer leads and waits in its sync.
    let (first, rest) = queue_behind_held_sync(&db, &mem, 1, 2..=16);
    assert_eq!(mem.syncs_held(), 1, "a queued commit synced on its own");
    mem.hold_syncs(false);
    let mut lsns = vec![join_within("the first commit", first).expect("first commit")];
    for h in rest {
        lsns.push(join_within("a queued commit", h).expect("queued commit"));
    }
    let after = db.metrics();
    assert_eq!(after.commits - before.commits, 16);
    assert_eq!(
        after.fsync.count() - before.fsync.count(),
        2,
        "the leader's group, then the fifteen queued behind it in one"
    );
    lsns.sort();
    lsns.dedup();
    assert_eq!(lsns.len(), 16, "every commit has its own LSN");
    let master = dump(&db, MASTER);
    assert_eq!(master.len(), 16);
    assert_eq!(replay_log(&db), master);
    db.close().expect("close");
    let (db, report) = open_mem(t.path(), &mem).expect("reopen");
    assert!(report.damaged.is_empty(), "{report:?}");
    assert_eq!(dump(&db, MASTER).len(), 16);
}

#[test]
fn a_failed_group_sync_fails_every_commit_queued_in_it_and_none_survives() {
    let t = tempfile::tempdir().expect("tempdir");
    let (mem, db) = fresh_mem(t.path());
    let mut s = db.session();
    s.store(MASTER, Some(Isn(100)), rec(&[("q", 100)]))
        .expect("store");
    s.et(None).expect("acknowledged before the fault");
    drop(s);
    // A group queued behind a sync is written once the sync is done.
    let (first, rest) = queue_behind_held_sync(&db, &mem, 1, 2..=8);
    mem.hold_syncs(false);
    join_within("the leader's commit", first).expect("the leader's commit");
    for h in rest {
        let r = join_within("a queued commit", h);
        assert!(r.is_ok(), "{r:?}");
    }
    // Now the leader's sync fails: its group and the one queued behind it
    // fail (the leader's told its outcome is unknown, those queued behind
    // it that they were never written), and nothing of either survives.
    let (leader, queued) = queue_behind_held_sync(&db, &mem, 20, 21..=28);
    // The queued commits are in the latest state (later transactions build
    // on them), but a reader who saw them is answered only once they are
    // durable: here, never.
    assert!(db.read(MASTER, Isn(20)).expect("read").is_some());
    let seen = db.last_lsn();
    let reader = {
        let db = db.clone();
        std::thread::spawn(move || db.wait_durable(seen))
    };
    mem.fail_next_sync();
    mem.hold_syncs(false);
    assert!(matches!(
        join_within("the leader's commit", leader),
        Err(DbError::OutcomeUnknown(_))
    ));
    for h in queued {
        let r = join_within("a queued commit", h);
        assert!(
            matches!(r, Err(DbError::Poisoned(_))),
            "a commit queued behind a failed sync must fail, known not written: {r:?}"
        );
    }
    let r = join_within("the reader", reader);
    assert!(
        matches!(r, Err(DbError::Poisoned(_))),
        "a reader must not be answered with a commit whose sync failed: {r:?}"
    );
    // A commit after the failure is refused before it is queued: it is
    // known not to be committed.
    let mut s = db.session();
    s.store(MASTER, Some(Isn(99)), rec(&[("q", 99)]))
        .expect("store");
    assert!(matches!(s.et(None), Err(DbError::Poisoned(_))));
    drop(s);
    let image = mem.synced_image();
    db.simulate_crash();
    let (db, report) = open_mem(t.path(), &image).expect("reopen");
    assert!(report.damaged.is_empty(), "{report:?}");
    let master = dump(&db, MASTER);
    let expected: Vec<Isn> = [1, 2, 3, 4, 5, 6, 7, 8, 100].into_iter().map(Isn).collect();
    assert_eq!(master.keys().copied().collect::<Vec<_>>(), expected);
    assert_eq!(replay_log(&db), master);
}

#[test]
fn a_close_waits_for_every_queued_commit_and_a_crash_then_drop_returns() {
    let t = tempfile::tempdir().expect("tempdir");
    let (mem, db) = fresh_mem(t.path());
    let (first, mut running) = queue_behind_held_sync(&db, &mem, 1, 2..=6);
    running.insert(0, first);
    let closer = {
        let db = db.clone();
        std::thread::spawn(move || db.close())
    };
    wait_until("the close to begin", || db.closing());
    // A page-store barrier asked while the close waits: answered behind
    // every queued commit's group, or refused as closed; never hangs.
    let barrier = {
        let db = db.clone();
        std::thread::spawn(move || db.wait_applied())
    };
    assert!(!closer.is_finished(), "the close did not wait for the sync");
    mem.hold_syncs(false);
    join_within("the close", closer).expect("clean close");
    for (i, h) in (1..=6).zip(running) {
        join_within("a queued commit", h)
            .unwrap_or_else(|e| panic!("commit {i} queued before the close failed: {e}"));
    }
    match join_within("the barrier", barrier) {
        Ok(()) | Err(DbError::Closed) => {}
        Err(e) => panic!("barrier: {e}"),
    }
    // A handle still held after the close sees it closed.
    let mut s = db.session();
    s.store(MASTER, Some(Isn(50)), rec(&[("q", 50)]))
        .expect("store");
    assert!(matches!(s.et(None), Err(DbError::Closed)));
    drop(s);
    drop(db);
    let (db, report) = open_mem(t.path(), &mem).expect("reopen");
    assert!(report.clean, "{report:?}");
    assert_eq!(dump(&db, MASTER).len(), 6);
    // A crash, then the last clone dropped: the drop's close finds the
    // database stopped already and returns.
    let other = db.clone();
    let crash = std::thread::spawn(move || {
        db.simulate_crash();
        drop(other);
    });
    join_within("a drop after a simulated crash", crash);
}

#[test]
fn a_leader_hands_over_after_its_rounds_and_groups_split_at_the_byte_limit() {
    let t = tempfile::tempdir().expect("tempdir");
    let mem = mem_db(t.path(), 1 << 20);
    let opts = Options {
        max_group_bytes: 1,
        ..Options::default()
    };
    let (db, _) = Database::open_with(t.path(), Arc::new(mem.clone()) as Arc<dyn MediumDir>, opts)
        .expect("open");
    setup(&db);
    let before = db.metrics();
    let (first, rest) = queue_behind_held_sync(&db, &mem, 1, 2..=11);
    mem.hold_syncs(false);
    // One entry per group: the first leader writes a few, then hands over to
    // the first committer still waiting, and so on until all are written.
    let mut lsns = vec![join_within("the first commit", first).expect("first")];
    for h in rest {
        lsns.push(join_within("a queued commit", h).expect("queued commit"));
    }
    let after = db.metrics();
    assert_eq!(after.fsync.count() - before.fsync.count(), 11);
    lsns.sort();
    lsns.dedup();
    assert_eq!(lsns.len(), 11);
    let master = dump(&db, MASTER);
    assert_eq!(master.len(), 11);
    assert_eq!(replay_log(&db), master);
}

/// Updates and stores given as client bytes (patched at the byte level):
/// the same records as through decoded records, a nil removing a field, a
/// second update in the same transaction, and a commit in between (the
/// patch is applied to what the record holds at ET).
#[test]
fn updates_given_as_bytes_patch_as_decoded_ones_do() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let enc = |pairs: &[(&str, Value)]| {
        let r: Record = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        propagator::record::encode_record(&r).expect("encodes")
    };
    let mut s = db.session();
    let stored = s
        .store_canonical(MASTER, Some(Isn(1)), enc(&[("a", Value::Int(1)), ("b", Value::Int(2))]))
        .expect("canonical");
    stored.expect("store");
    s.et(None).expect("et");
    s.update_canonical(MASTER, Isn(1), enc(&[("a", Value::Null), ("c", Value::Int(3))]))
        .expect("canonical")
        .expect("update");
    s.update_canonical(MASTER, Isn(1), enc(&[("d", Value::Int(4))]))
        .expect("canonical")
        .expect("a second update in the transaction");
    // Another session commits an update of the same record first.
    let mut other = db.session();
    other
        .update(MASTER, Isn(1), rec(&[("b", 20)]))
        .expect("other update");
    other.et(None).expect("other et");
    s.et(None).expect("et");
    let got = db.read(MASTER, Isn(1)).expect("read").expect("record");
    let want: Record = [
        ("b".to_string(), Value::Int(20)),
        ("c".to_string(), Value::Int(3)),
        ("d".to_string(), Value::Int(4)),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    // Not canonical (a wider integer form than needed): handed back.
    let wide = vec![0x81, 0xa1, b'a', 0xcc, 0x05];
    assert_eq!(s.update_canonical(MASTER, Isn(1), wide.clone()).err(), Some(wide));
    // A missing record, and one over the size limit, are refused.
    assert!(matches!(
        s.update_canonical(MASTER, Isn(9), enc(&[("a", Value::Int(1))])),
        Ok(Err(DbError::RecordMissing { .. }))
    ));
    let mut t2 = db.session();
    // The patch fits; the record patched does not.
    let big = enc(&[("x", Value::Bytes(vec![0; propagator::record::MAX_RECORD_BYTES - 8]))]);
    assert_eq!(big.len(), propagator::record::MAX_RECORD_BYTES);
    assert!(matches!(
        t2.update_canonical(MASTER, Isn(1), big),
        Ok(Err(DbError::BadRecord { .. }))
    ));
}

/// An update or delete whose record another commit changed after the
/// session read it logs the record as that commit left it, whether the
/// change is still in the overlay or already in the page store.
#[test]
fn a_record_changed_after_the_session_read_it_is_logged_as_it_is() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let mut s = db.session();
    for i in 1..=2 {
        s.store(MASTER, Some(Isn(i)), rec(&[("q", 1)])).expect("store");
    }
    s.et(None).expect("et");
    db.wait_applied().expect("applied");
    for applied_between in [false, true] {
        let isn = Isn(if applied_between { 2 } else { 1 });
        let mut a = db.session();
        a.delete(MASTER, isn).expect("delete read");
        let mut b = db.session();
        b.update(MASTER, isn, rec(&[("q", 7)])).expect("update");
        b.et(None).expect("b et");
        if applied_between {
            db.wait_applied().expect("applied");
        }
        let info = a.et(None).expect("a et");
        let (_, last) = info.seqs[&MASTER];
        let logged = db.read_log_record(LOG, last).expect("read").expect("record");
        assert_eq!(
            logged.before.as_deref().map(|b| propagator::record::decode_record(b).expect("decodes")),
            Some(rec(&[("q", 7)])),
            "applied between: {applied_between}"
        );
    }
    assert!(dump(&db, MASTER).is_empty());
}

/// A pipelined session: a transaction queued (not yet durable) is seen by
/// the session's next one, and each is acknowledged from another thread
/// than the one that queued it, in LSN order.
#[test]
fn a_queued_commit_is_seen_by_the_next_and_acknowledged_from_another_thread() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let mut s = db.session();
    s.store(MASTER, Some(Isn(1)), rec(&[("q", 1)])).expect("store");
    let first = s.et_queued(None).expect("first queued");
    s.update(MASTER, Isn(1), rec(&[("q", 2)]))
        .expect("the next transaction sees the queued store");
    let second = s.et_queued(None).expect("second queued");
    assert!(second.lsn() > first.lsn());
    // The later one waits first: it is answered once the earlier one leads
    // their group.
    let h2 = std::thread::spawn(move || second.wait());
    let h1 = std::thread::spawn(move || first.wait());
    let i1 = h1.join().expect("join").expect("first commit");
    let i2 = h2.join().expect("join").expect("second commit");
    assert!(i2.lsn > i1.lsn);
    assert_eq!(
        db.read(MASTER, Isn(1)).expect("read"),
        Some(rec(&[("q", 2)]))
    );
    // One dropped without a wait still commits (its drop waits).
    s.store(MASTER, Some(Isn(2)), rec(&[("q", 3)])).expect("store");
    drop(s.et_queued(None).expect("queued"));
    s.store(MASTER, Some(Isn(3)), rec(&[("q", 4)])).expect("store");
    s.et(None).expect("a commit after a dropped one");
    assert_eq!(dump(&db, MASTER).len(), 3);
}

/// The log's tail kept in memory for the feeders reads exactly as the page
/// store does, through commits and after a refresh rewrote the log.
#[test]
fn the_log_tail_in_memory_reads_as_the_page_store() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    // Runs read from every seq (from the tail, the page store, or both)
    // equal the records read one by one.
    let same = |db: &Database, seqs: std::ops::RangeInclusive<u64>| {
        for s in seqs {
            let run: Vec<_> = db
                .read_log_run(LOG, Seq(s), 7, usize::MAX)
                .expect("run read")
                .into_iter()
                .map(|r| (*r).clone())
                .collect();
            let mut stored = Vec::new();
            for k in s..s + 7 {
                match db.read_log_record(LOG, Seq(k)).expect("stored read") {
                    Some(r) => stored.push(r),
                    None => break,
                }
            }
            assert_eq!(run, stored, "run from seq {s}");
        }
    };
    let mut s = db.session();
    for i in 1..=40u64 {
        s.store(MASTER, Some(Isn(i)), rec(&[("q", i as i64)]))
            .expect("store");
        if i % 3 == 0 {
            s.update(MASTER, Isn(i - 1), rec(&[("q", -1)]))
                .expect("update");
        }
        s.et(None).expect("et");
    }
    let last = db.file_info(LOG).expect("info").meta.next_isn - 1;
    assert!(last >= 40);
    same(&db, 1..=last + 1);
    // A refresh rewrites the log: the tail must not serve what it held.
    let r = db.refresh_log(MASTER, None).expect("refresh");
    drop(r);
    let last = db.file_info(LOG).expect("info").meta.next_isn - 1;
    same(&db, 1..=last + 1);
    // And it follows the commits after it.
    s.store(MASTER, Some(Isn(100)), rec(&[("q", 100)]))
        .expect("store");
    s.et(None).expect("et");
    let next = db.file_info(LOG).expect("info").meta.next_isn;
    same(&db, 1..=next);
}

/// An update patches what the commit finds: another transaction's commit
/// between the command and its ET is kept, not overwritten by the record
/// the session saw.
#[test]
fn an_update_patches_the_record_as_committed_at_et() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let mut s = db.session();
    let mut r = rec(&[("a", 1), ("b", 1)]);
    s.store(MASTER, Some(Isn(1)), r.clone()).expect("store");
    s.et(None).expect("et");
    let mut first = db.session();
    first
        .update(MASTER, Isn(1), rec(&[("a", 2)]))
        .expect("update a");
    let mut second = db.session();
    second
        .update(MASTER, Isn(1), rec(&[("b", 3)]))
        .expect("update b");
    second.et(None).expect("et b");
    first.et(None).expect("et a");
    r.insert("a".into(), Value::Int(2));
    r.insert("b".into(), Value::Int(3));
    assert_eq!(db.read(MASTER, Isn(1)).expect("read"), Some(r.clone()));
    // The log's after-images say the same, in commit order.
    let last = db.file_info(LOG).expect("info").meta.next_isn - 1;
    let after = db
        .read_log_record(LOG, Seq(last))
        .expect("log")
        .and_then(|l| l.after)
        .expect("after-image");
    assert_eq!(propagator::record::decode_record(&after).expect("decode"), r);
    // An update of a record this transaction already changed patches its own view.
    let mut s = db.session();
    s.update(MASTER, Isn(1), rec(&[("a", 5)])).expect("u1");
    s.update(MASTER, Isn(1), rec(&[("b", 6)])).expect("u2");
    s.et(None).expect("et");
    assert_eq!(
        db.read(MASTER, Isn(1)).expect("read"),
        Some(rec(&[("a", 5), ("b", 6)]))
    );
}

/// The files of log file `LOG`'s own store.
fn log_segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("logs").join(format!("log-{}", LOG.0)))
        .expect("log store directory")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

/// Commits `n` transactions of three master records each (isns from
/// `first`), with some padding so the log's segments fill.
fn commit_padded(db: &Database, first: u64, n: u64) {
    let mut s = db.session();
    for t in 0..n {
        for k in 0..3 {
            let isn = first + 3 * t + k;
            let mut r = rec(&[("q", isn as i64)]);
            r.insert("pad".into(), Value::Text("x".repeat(40)));
            s.store(MASTER, Some(Isn(isn)), r).expect("store");
        }
        s.et(None).expect("et");
    }
}

#[test]
fn a_log_store_lost_or_cut_after_its_last_sync_is_rebuilt_from_the_protection_log() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    commit_padded(&db, 1, 60);
    let want = replay_log(&db);
    assert_eq!(want.len(), 180);
    let want_log = dump_raw(&db, LOG);
    db.simulate_crash();
    // The last segment cut in the middle of a frame: rebuilt.
    let last = log_segments(t.path()).pop().expect("a segment");
    let len = std::fs::metadata(&last).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open")
        .set_len(len / 2 + 3)
        .expect("cut");
    let (db, report) = Database::open(t.path()).expect("open");
    assert!(report.damaged.is_empty(), "{report:?}");
    assert_eq!(dump_raw(&db, LOG), want_log);
    assert_eq!(replay_log(&db), want);
    db.simulate_crash();
    // The whole store gone: rebuilt too, while the protection log reaches back.
    std::fs::remove_dir_all(t.path().join("logs")).expect("rm");
    let (db, report) = Database::open(t.path()).expect("open");
    assert!(report.damaged.is_empty(), "{report:?}");
    assert_eq!(dump_raw(&db, LOG), want_log);
    assert!(db.check().expect("check").is_ok());
    // And it goes on from there.
    commit_padded(&db, 1000, 2);
    assert_eq!(replay_log(&db).len(), 186);
}

#[test]
fn a_flipped_byte_in_a_log_store_is_named_by_check_and_by_open_when_the_log_cannot_rebuild_it()
{
    let t = tempfile::tempdir().expect("tempdir");
    Database::init_with_engine(t.path(), DbId(1), Some(4096), ENGINE).expect("init");
    let (db, _) = Database::open(t.path()).expect("open");
    setup(&db);
    commit_padded(&db, 1, 400);
    assert!(log_segments(t.path()).len() > 2);
    // The protection log no longer reaches back to the log's first records.
    assert!(!db.remove_segments(db.last_lsn()).expect("remove").is_empty());
    let first = log_segments(t.path()).remove(0);
    let mut bytes = std::fs::read(&first).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&first, &bytes).expect("write");
    // A running database's check reads every frame of the store.
    let report = db.check().expect("check");
    let bad: Vec<_> = report
        .files
        .iter()
        .filter_map(|f| f.problem.as_ref().map(|p| (f.fnr, p.clone())))
        .collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0].0, LOG);
    let name = first.file_name().expect("name").to_string_lossy().into_owned();
    assert!(bad[0].1.contains(&name) && bad[0].1.contains("offset"), "{bad:?}");
    db.close().expect("close");
    // At open the store is cut back to its last good mark, which the
    // protection log cannot bring forward: open stops, naming it.
    let err = Database::open(t.path()).err().expect("open must fail");
    assert!(matches!(err, DbError::LogStoreBehindLog { fnr: LOG, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&name) && msg.contains("offset"), "{msg}");
    // Nothing was cut: the damaged segment and those after it are all there.
    assert_eq!(std::fs::read(&first).expect("read"), bytes);
}

#[test]
fn log_cleanup_removes_whole_segments_of_the_log_store_and_keeps_the_rest() {
    let t = tempfile::tempdir().expect("tempdir");
    Database::init_with_engine(t.path(), DbId(1), Some(4096), ENGINE).expect("init");
    let (db, _) = Database::open(t.path()).expect("open");
    setup(&db);
    commit_padded(&db, 1, 600);
    let before = log_segments(t.path());
    assert!(before.len() > 3, "{before:?}");
    // Cleanup deletes log records from the front (as `log cleanup` does).
    db.restore_range(LOG, Isn(1), Some(Isn(1201)), Vec::new(), None)
        .expect("cleanup");
    // The page store (and the log store with it) is written after the sync.
    db.wait_applied().expect("applied");
    let after = log_segments(t.path());
    assert!(after.len() < before.len(), "{before:?} → {after:?}");
    assert_eq!(after.last(), before.last());
    let kept = dump_raw(&db, LOG);
    assert_eq!(kept.keys().next(), Some(&Isn(1201)));
    assert_eq!(kept.len(), 600);
    db.simulate_crash();
    let (db, report) = Database::open(t.path()).expect("open");
    assert!(report.damaged.is_empty(), "{report:?}");
    assert_eq!(dump_raw(&db, LOG), kept);
    assert!(db.check().expect("check").is_ok());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
    /// Random transactions on a master, with crashes and clean stops
    /// between them: the log read back through the feeders' reader (from
    /// the tail in memory, and from the log store after a reopen) is the
    /// sequence of committed changes, seq by seq.
    #[test]
    fn the_log_read_by_the_feeders_reader_is_the_sequence_of_committed_changes(
        txns in proptest::collection::vec(
            (proptest::collection::vec((0u8..3, 1u64..30, 0i64..1000), 1..6), 0u8..6),
            1..25,
        )
    ) {
        let t = tempfile::tempdir().expect("tempdir");
        Database::init_with_engine(t.path(), DbId(1), Some(4096), ENGINE).expect("init");
        let (mut db, _) = Database::open(t.path()).expect("open");
        setup(&db);
        let mut state: BTreeMap<Isn, Record> = BTreeMap::new();
        let mut want: Vec<(LogOp, Isn, Option<Record>, Option<Record>)> = Vec::new();
        let read_all = |db: &Database| -> Vec<(LogOp, Isn, Option<Record>, Option<Record>)> {
            let mut out = Vec::new();
            let mut from = 1;
            loop {
                let run = db.read_log_run(LOG, Seq(from), 7, 1 << 20).expect("read");
                if run.is_empty() {
                    break out;
                }
                for r in run {
                    assert_eq!(r.seq, Seq(from));
                    from += 1;
                    let dec = |b: &Option<Vec<u8>>| b.as_ref().map(|b| propagator::record::decode_record(b).expect("dec"));
                    out.push((r.op, r.isn, dec(&r.before), dec(&r.after)));
                }
            }
        };
        for (ops, after) in txns {
            let mut s = db.session();
            let mut touched = std::collections::BTreeSet::new();
            let mut pending = Vec::new();
            for (kind, isn, v) in ops {
                let isn = Isn(isn);
                if !touched.insert(isn) {
                    continue;
                }
                let r = rec(&[("v", v)]);
                match state.get(&isn).cloned() {
                    None => {
                        s.store(MASTER, Some(isn), r.clone()).expect("store");
                        pending.push((LogOp::Store, isn, None, Some(r)));
                    }
                    Some(old) if kind < 2 => {
                        s.update(MASTER, isn, r.clone()).expect("update");
                        let mut new = old.clone();
                        new.extend(r);
                        pending.push((LogOp::Update, isn, Some(old), Some(new)));
                    }
                    Some(old) => {
                        s.delete(MASTER, isn).expect("delete");
                        pending.push((LogOp::Delete, isn, Some(old), None));
                    }
                }
            }
            if after == 0 {
                // Backed out: leaves nothing in the log.
                s.bt();
                continue;
            }
            s.et(None).expect("et");
            drop(s);
            for (op, isn, b, a) in pending {
                match &a {
                    Some(r) => state.insert(isn, r.clone()),
                    None => state.remove(&isn),
                };
                want.push((op, isn, b, a));
            }
            proptest::prop_assert_eq!(&read_all(&db), &want);
            match after {
                1 => {
                    db.simulate_crash();
                    db = Database::open(t.path()).expect("reopen").0;
                }
                2 => {
                    db.close().expect("close");
                    db = Database::open(t.path()).expect("reopen").0;
                }
                _ => {}
            }
        }
        proptest::prop_assert_eq!(&read_all(&db), &want);
        proptest::prop_assert_eq!(replay_log(&db), state);
    }
}

/// What an idle-durable hook saw: the LSN it was run for, the durable LSN
/// readers saw meanwhile, and the thread that ran it.
type Runs = Arc<std::sync::Mutex<Vec<(propagator::Lsn, propagator::Lsn, std::thread::ThreadId, bool)>>>;
/// What the hook saw, the database, a durable watch receiver marked
/// seen before each commit, the flushes, and each `prepare`: its LSN and
/// the durable LSN readers saw meanwhile.
struct Seen(
    Runs,
    Database,
    Arc<std::sync::Mutex<tokio::sync::watch::Receiver<propagator::Lsn>>>,
    Arc<std::sync::atomic::AtomicUsize>,
    Prepares,
);

type Prepares = Arc<std::sync::Mutex<Vec<(propagator::Lsn, propagator::Lsn)>>>;

impl propagator::database::IdleDurable for Seen {
    fn prepare(&self, upto: propagator::Lsn) {
        let readers = *self.1.subscribe_durable().borrow();
        self.4.lock().expect("lock").push((upto, readers));
    }

    fn durable(&self, lsn: propagator::Lsn) -> bool {
        let readers = *self.1.subscribe_durable().borrow();
        // Woken already? (Receivers are woken after the hooks.)
        let woken = self.2.lock().expect("lock").has_changed().unwrap_or(true);
        self.0
            .lock()
            .expect("lock")
            .push((lsn, readers, std::thread::current().id(), woken));
        true
    }

    /// Sent after every hook prepared (here: counted).
    fn flush(&self) {
        self.3.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A [`Seen`] hook registered with `db`, and what it records.
struct Hooked {
    hook: Arc<dyn propagator::database::IdleDurable>,
    runs: Runs,
    rx: Arc<std::sync::Mutex<tokio::sync::watch::Receiver<propagator::Lsn>>>,
    flushed: Arc<std::sync::atomic::AtomicUsize>,
    prepares: Prepares,
}

fn hooked(db: &Database) -> Hooked {
    let runs = Runs::default();
    let rx = Arc::new(std::sync::Mutex::new(db.subscribe_durable()));
    let flushed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let prepares = Prepares::default();
    let hook: Arc<dyn propagator::database::IdleDurable> = Arc::new(Seen(
        runs.clone(),
        db.clone(),
        rx.clone(),
        flushed.clone(),
        prepares.clone(),
    ));
    db.on_idle_durable(Arc::downgrade(&hook));
    Hooked {
        hook,
        runs,
        rx,
        flushed,
        prepares,
    }
}

#[test]
fn a_leader_with_nothing_more_to_lead_runs_the_idle_hooks_once_durable() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let Hooked {
        hook,
        runs,
        rx,
        flushed,
        prepares,
    } = hooked(&db);
    let mut durable = db.subscribe_durable();
    durable.borrow_and_update();
    let mut lsns = Vec::new();
    for q in 0..3 {
        rx.lock().expect("lock").borrow_and_update();
        let mut s = db.session();
        s.store(MASTER, None, rec(&[("qty", q)])).expect("store");
        lsns.push(s.et(None).expect("et").lsn);
        // The durable watch's receivers are woken once the hooks ran.
        assert!(durable.has_changed().expect("watch"), "commit {q} woke nobody");
        durable.borrow_and_update();
        if let Some(h) = runs.lock().expect("lock").last() {
            assert!(!h.3, "commit {q}: receivers were woken before the hooks ran");
        }
    }
    // A lone commit's leader is its own thread: it ran the hook for its
    // LSN before returning, and readers saw that LSN durable already.
    let me = std::thread::current().id();
    let got = runs.lock().expect("lock").clone();
    assert_eq!(
        got,
        lsns.iter().map(|l| (*l, *l, me, false)).collect::<Vec<_>>(),
        "hooks run"
    );
    // What each prepared was sent.
    assert_eq!(flushed.load(std::sync::atomic::Ordering::SeqCst), 3);
    // Nobody waited behind any of them: each leader had the hook prepare
    // its group while syncing it, before readers saw it durable.
    let before: Vec<_> = lsns.iter().map(|l| (*l, propagator::Lsn(l.0 - 1))).collect();
    assert_eq!(*prepares.lock().expect("lock"), before, "prepares");
    // A dropped hook is forgotten: it is not run again.
    drop(hook);
    let mut s = db.session();
    s.store(MASTER, None, rec(&[("qty", 9)])).expect("store");
    s.et(None).expect("et");
    assert_eq!(runs.lock().expect("lock").len(), 3);
}

#[test]
fn a_hook_prepared_for_a_group_whose_sync_fails_is_never_told_it_is_durable() {
    let t = tempfile::tempdir().expect("tempdir");
    let (mem, db) = fresh_mem(t.path());
    let Hooked {
        hook: _hook,
        runs,
        flushed,
        prepares,
        ..
    } = hooked(&db);
    let mut s = db.session();
    s.store(MASTER, None, rec(&[("qty", 1)])).expect("store");
    let good = s.et(None).expect("et").lsn;
    mem.fail_next_sync();
    s.store(MASTER, None, rec(&[("qty", 2)])).expect("store");
    assert!(matches!(s.et(None), Err(DbError::OutcomeUnknown(_))));
    // Both groups were prepared; only the synced one was said durable,
    // and only its frame was sent.
    let prepared: Vec<_> = prepares.lock().expect("lock").iter().map(|p| p.0).collect();
    assert_eq!(prepared, vec![good, propagator::Lsn(good.0 + 1)]);
    let told: Vec<_> = runs.lock().expect("lock").iter().map(|r| r.0).collect();
    assert_eq!(told, vec![good]);
    assert_eq!(flushed.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(*db.subscribe_durable().borrow(), good);
}

/// What reading the protection log of the database in `dir` after LSN
/// `after`, for file `fnr`, says when it meets a bulk chunk (it must).
fn slice_err(
    db: &Database,
    dir: &Path,
    after: propagator::Lsn,
    fnr: Fnr,
) -> propagator::slice::SliceError {
    let mut base = propagator::slice::SliceBase {
        catalog: db.files().into_iter().map(|f| (f.def.fnr, f.def)).collect(),
        metas: BTreeMap::new(),
    };
    propagator::slice::read_slice(
        &propagator::medium::FsDir::new(dir.join("plog")),
        db.dbid(),
        &mut base,
        after,
        None,
        &[fnr].into_iter().collect(),
        |c| c.whole().map(|_| true),
    )
    .expect_err("a slice across a bulk chunk")
}

/// Swaps `dir`'s page store and log stores for `store` and `logs`.
fn swap_stores(dir: &Path, store: &Path, logs: &Path) {
    for (from, to) in [(store, dir.join("store")), (logs, dir.join("logs"))] {
        std::fs::remove_dir_all(&to).expect("rm");
        copy_dir(from, &to);
    }
}

#[test]
fn a_restore_from_empty_goes_in_bulk_and_replay_checks_the_page_store_holds_each_chunk() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("db");
    let source: Vec<(Isn, Vec<u8>)> = (1..=40)
        .map(|i| {
            let mut r = rec(&[("v", i)]);
            r.insert("pad".into(), Value::Text("p".repeat(2000)));
            (Isn(i as u64), propagator::record::encode_record(&r).expect("encode"))
        })
        .collect();
    let mut want = propagator::FileMeta::new(PLAIN);
    for (i, b) in &source {
        want.change(*i, None, Some(b));
    }
    let db = fresh(&dir);
    db.begin_restore(PLAIN, "a bulk test").expect("begin");
    db.close().expect("close");
    // The stores as they were before any chunk: what a page store that had
    // not applied the chunks' entries yet would hold (plus the chunks).
    let (old_store, old_logs) = (t.path().join("old-store"), t.path().join("old-logs"));
    copy_dir(&dir.join("store"), &old_store);
    copy_dir(&dir.join("logs"), &old_logs);
    let (db, _) = Database::open(&dir).expect("reopen");
    db.begin_restore(PLAIN, "a bulk test").expect("begin again");
    let before = db.last_lsn();
    let bulk = |chunk: &[(Isn, Vec<u8>)]| propagator::database::Restore::Bulk {
        sum: propagator::database::chunk_sum(chunk),
    };
    let (first, rest) = (source[..20].to_vec(), source[20..].to_vec());
    let (b1, b2) = (bulk(&first), bulk(&rest));
    db.restore_range_queued(PLAIN, Isn(1), Some(Isn(21)), first, None, b1)
        .expect("first chunk")
        .0
        .wait()
        .expect("first chunk durable");
    db.restore_range_queued(PLAIN, Isn(21), None, rest, Some(want), b2)
        .expect("last chunk")
        .0
        .wait()
        .expect("last chunk durable");
    let info = db.file_info(PLAIN).expect("info");
    assert_eq!((info.meta, info.damaged), (want, None));
    assert_eq!(dump_raw(&db, PLAIN), source.iter().cloned().collect());
    // Named, not carried: a slice across the chunks says why it cannot be
    // read.
    let err = slice_err(&db, &dir, before, PLAIN);
    assert!(
        matches!(
            err,
            propagator::slice::SliceError::Bulk {
                fnr: PLAIN,
                first: Isn(1),
                last: Isn(20),
                ..
            }
        ),
        "{err}"
    );
    db.close().expect("close");
    let put = |store: &Path, chunk: &[(Isn, Vec<u8>)]| {
        let s = propagator::store::PageStore::open(store, ENGINE, 1 << 20, 1 << 20).expect("store");
        s.bulk_put(PLAIN, chunk).expect("bulk put");
    };

    // The chunks durable in the page store, their entries not applied:
    // replay checks each chunk is there, and the file is whole.
    let (a_store, a_logs) = (t.path().join("a-store"), t.path().join("a-logs"));
    copy_dir(&old_store, &a_store);
    copy_dir(&old_logs, &a_logs);
    put(&a_store, &source);
    swap_stores(&dir, &a_store, &a_logs);
    let (db, report) = Database::open(&dir).expect("open with the entries unapplied");
    assert!(report.replayed >= 2, "{report:?}");
    assert!(report.damaged.is_empty(), "{report:?}");
    assert_eq!(db.file_info(PLAIN).expect("info").meta, want);
    assert_eq!(dump_raw(&db, PLAIN), source.iter().cloned().collect());
    assert!(db.check().expect("check").is_ok());
    db.close().expect("close");

    // The second chunk lost by the page store: the log cannot bring it
    // back, and the file is damaged, naming the chunk and its LSN.
    let (b_store, b_logs) = (t.path().join("b-store"), t.path().join("b-logs"));
    copy_dir(&old_store, &b_store);
    copy_dir(&old_logs, &b_logs);
    put(&b_store, &source[..20]);
    swap_stores(&dir, &b_store, &b_logs);
    opens_with_bulk_chunk_damaged(&dir, "bulk chunk of isns 21..=40", "a chunk lost");
}

/// Opens the database in `dir` and checks that `PLAIN` is damaged, its
/// reason naming `chunk` as not whole, and that it cannot be read.
fn opens_with_bulk_chunk_damaged(dir: &Path, chunk: &str, case: &str) {
    let (db, report) = Database::open(dir).expect(case);
    let reason = report
        .damaged
        .iter()
        .find(|(f, _)| *f == PLAIN)
        .map(|(_, r)| r.clone())
        .unwrap_or_default();
    assert!(
        reason.contains(chunk) && reason.contains("not whole"),
        "{case}: {report:?}"
    );
    assert!(matches!(
        db.read(PLAIN, Isn(1)),
        Err(DbError::FileDamaged { .. })
    ));
    db.close().expect("close");
}

#[test]
fn a_restore_from_empty_is_ingested_as_sorted_runs_and_replay_checks_they_are_whole() {
    use propagator::database::{chunk_sum, IngestChunk};
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("db");
    let source: Vec<(Isn, Vec<u8>)> = (1..=40)
        .map(|i| {
            let mut r = rec(&[("v", i)]);
            r.insert("pad".into(), Value::Text("p".repeat(500)));
            (Isn(i as u64), propagator::record::encode_record(&r).expect("encode"))
        })
        .collect();
    let mut want = propagator::FileMeta::new(PLAIN);
    for (i, b) in &source {
        want.change(*i, None, Some(b));
    }
    let chunks = |parts: &[&[(Isn, Vec<u8>)]], last: propagator::FileMeta| -> Vec<IngestChunk> {
        let n = parts.len();
        parts
            .iter()
            .enumerate()
            .map(|(k, p)| IngestChunk {
                records: p.to_vec(),
                sum: chunk_sum(p),
                last: (k + 1 == n).then_some(last),
            })
            .collect()
    };
    let db = fresh(&dir);
    // Only a file being restored, and only a page store that keeps each
    // file's records apart, ingests.
    assert!(!db.can_restore_ingest(PLAIN).expect("can"));
    db.begin_restore(PLAIN, "an ingest test").expect("begin");
    db.close().expect("close");
    let (old_store, old_logs) = (t.path().join("old-store"), t.path().join("old-logs"));
    copy_dir(&dir.join("store"), &old_store);
    copy_dir(&dir.join("logs"), &old_logs);
    let (db, _) = Database::open(&dir).expect("reopen");
    db.begin_restore(PLAIN, "an ingest test").expect("begin again");
    if ENGINE == propagator::Engine::Sled {
        assert!(!db.can_restore_ingest(PLAIN).expect("can"));
        let err = db
            .restore_ingest(PLAIN, &mut chunks(&[&source], want).into_iter())
            .err()
            .expect("sled does not ingest");
        assert!(err.to_string().contains("cannot be ingested"), "{err}");
        return;
    }
    assert!(db.can_restore_ingest(PLAIN).expect("can"));

    // Chunks out of order: an error naming the isns; the file counts
    // nothing of it and stays marked as being restored (damaged).
    let (a, b) = (&source[..20], &source[20..]);
    let err = db
        .restore_ingest(PLAIN, &mut chunks(&[b, a], want).into_iter())
        .err()
        .expect("out of order");
    assert!(err.to_string().contains("out of order: isn 1 after 40"), "{err}");
    assert!(db.file_info(PLAIN).expect("info").damaged.is_some());
    assert!(matches!(
        db.read(PLAIN, Isn(1)),
        Err(DbError::FileDamaged { .. })
    ));
    // Now not empty: a restore run again rebases and writes logged.
    assert!(!db.can_restore_ingest(PLAIN).expect("can"));
    db.close().expect("close");

    // A restore into the file as it was: ingested whole, one entry naming
    // every record, and the file proved against the copy's meta.
    swap_stores(&dir, &old_store, &old_logs);
    copy_dir(&dir.join("store"), &old_store);
    copy_dir(&dir.join("logs"), &old_logs);
    let (db, _) = Database::open(&dir).expect("reopen");
    db.begin_restore(PLAIN, "an ingest test").expect("begin again");
    let before = db.last_lsn();
    let wrong = propagator::FileMeta {
        count: want.count + 1,
        ..want
    };
    let err = db
        .restore_ingest(PLAIN, &mut chunks(&[a, b], wrong).into_iter())
        .err()
        .expect("a proof that fails");
    assert!(err.to_string().contains("but the copy holds 41 records"), "{err}");
    assert!(db.file_info(PLAIN).expect("info").damaged.is_some());
    db.close().expect("close");
    swap_stores(&dir, &old_store, &old_logs);
    copy_dir(&dir.join("store"), &old_store);
    copy_dir(&dir.join("logs"), &old_logs);
    let (db, _) = Database::open(&dir).expect("reopen");
    db.begin_restore(PLAIN, "an ingest test").expect("begin again");
    let (pending, stats) = db
        .restore_ingest(PLAIN, &mut chunks(&[a, b], want).into_iter())
        .expect("ingest");
    pending.wait().expect("durable");
    assert_eq!(stats.written, 40);
    let info = db.file_info(PLAIN).expect("info");
    assert_eq!((info.meta, info.damaged), (want, None));
    assert_eq!(dump_raw(&db, PLAIN), source.iter().cloned().collect());
    assert!(db.check().expect("check").is_ok());
    let err = slice_err(&db, &dir, before, PLAIN);
    assert!(
        matches!(
            err,
            propagator::slice::SliceError::Bulk {
                fnr: PLAIN,
                first: Isn(1),
                last: Isn(40),
                ..
            }
        ),
        "{err}"
    );
    // Written once, as sorted runs of the file's own partition.
    let runs = dir.join(format!("store/partitions/file-{}/segments", PLAIN.0));
    assert!(
        std::fs::read_dir(&runs).expect("runs").count() > 0,
        "{}",
        runs.display()
    );
    db.close().expect("close");
    let (db, report) = Database::open(&dir).expect("reopen after");
    assert!(report.damaged.is_empty(), "{report:?}");
    assert_eq!(dump_raw(&db, PLAIN), source.iter().cloned().collect());
    db.close().expect("close");
    let (good_store, good_logs) = (t.path().join("good-store"), t.path().join("good-logs"));
    copy_dir(&dir.join("store"), &good_store);
    copy_dir(&dir.join("logs"), &good_logs);

    // The runs durable, the entry not applied by the page store: replay
    // checks the file's records are whole.
    let ingest = |store: &Path, recs: &[(Isn, Vec<u8>)]| {
        let s = propagator::store::PageStore::open(store, ENGINE, 1 << 20, 1 << 20).expect("store");
        s.ingest(PLAIN, &mut recs.iter().cloned()).expect("ingest");
    };
    let (c_store, c_logs) = (t.path().join("c-store"), t.path().join("c-logs"));
    copy_dir(&old_store, &c_store);
    copy_dir(&old_logs, &c_logs);
    ingest(&c_store, &source);
    swap_stores(&dir, &c_store, &c_logs);
    let (db, report) = Database::open(&dir).expect("open with the entry unapplied");
    assert!(report.replayed >= 1, "{report:?}");
    assert!(report.damaged.is_empty(), "{report:?}");
    assert_eq!(db.file_info(PLAIN).expect("info").meta, want);
    assert!(db.check().expect("check").is_ok());
    db.close().expect("close");

    // The page store as before the restore, then `damage`: the file is
    // damaged at open, naming the entry, and does not read.
    let not_whole = |name: &str, damage: &dyn Fn(&Path)| {
        let (store, logs) = (
            t.path().join(format!("{name}-store")),
            t.path().join(format!("{name}-logs")),
        );
        copy_dir(&old_store, &store);
        copy_dir(&old_logs, &logs);
        damage(&store);
        swap_stores(&dir, &store, &logs);
        opens_with_bulk_chunk_damaged(&dir, "bulk chunk of isns 1..=40", name);
    };
    // Half the runs lost.
    not_whole("lost", &|store| ingest(store, &source[..20]));
    // A flipped byte inside an ingested run (the engine keeps no checksum
    // it checks on read): with the entry not applied, replay finds the run
    // does not hold what the entry names, and the restore is not taken as
    // done; with it applied, `check` names the file.
    not_whole("flipped", &|store| {
        ingest(store, &source);
        flip_in_runs(store, PLAIN);
    });
    flip_in_runs(&good_store, PLAIN);
    swap_stores(&dir, &good_store, &good_logs);
    let (db, report) = Database::open(&dir).expect("open with a flipped byte, entry applied");
    assert!(report.damaged.is_empty(), "not replayed: {report:?}");
    let check = db.check().expect("check");
    assert!(!check.is_ok(), "{check:?}");
    let bad = check
        .files
        .iter()
        .find(|f| f.fnr == PLAIN)
        .and_then(|f| f.problem.clone())
        .unwrap_or_default();
    assert!(!bad.is_empty(), "{check:?}");
    db.close().expect("close");
}

/// Flips one byte of a record's value inside the sorted runs of `fnr`'s
/// partition: the first `p` of a run of them (the test records' padding)
/// becomes `q`.
fn flip_in_runs(store: &Path, fnr: Fnr) {
    let runs = store.join(format!("partitions/file-{}/segments", fnr.0));
    let mut flipped = false;
    for e in std::fs::read_dir(&runs).expect("runs") {
        let path = e.expect("entry").path();
        let mut bytes = std::fs::read(&path).expect("read run");
        if let Some(at) = bytes.windows(64).position(|w| w.iter().all(|b| *b == b'p')) {
            bytes[at] = b'q';
            std::fs::write(&path, &bytes).expect("write run");
            flipped = true;
            break;
        }
    }
    assert!(flipped, "no padding found in {}", runs.display());
}

/// A reload that writes every record (a full reinit) of a replicate that
/// holds records empties it first, in one entry with the load's progress
/// ([`propagator::catalog::CatalogOp::Clear`]): its chunks then go to the
/// page store in bulk. Replay empties the file again when the page store
/// had not applied the entry, and no slice crosses it.
#[test]
fn a_reload_empties_the_replicate_first_so_its_chunks_go_in_bulk_and_replay_empties_it_again() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("db");
    let db = fresh(&dir);
    let (rep, _) = replicate_files(&db);
    let conf = Fnr(41);
    let progress = |id: &str, next: i64| {
        let mut r = Record::new();
        r.insert("load_id".into(), Value::Text(id.into()));
        r.insert("load_next".into(), Value::Int(next));
        r
    };
    let chunk = |from: u64, to: u64, k: i64| -> Vec<(Isn, Vec<u8>)> {
        (from..to)
            .map(|i| {
                let b = propagator::record::encode_record(&rec(&[("v", i as i64 * k)]));
                (Isn(i), b.expect("encode"))
            })
            .collect()
    };
    let meta_of = |recs: &[(Isn, Vec<u8>)]| {
        let mut m = propagator::FileMeta::new(rep);
        for (i, b) in recs {
            m.change(*i, None, Some(b));
        }
        m
    };
    let load = |db: &Database, id: &str, from: u64, to: Option<u64>, recs, expect| {
        db.load_range(
            rep,
            Isn(from),
            to.map(Isn),
            recs,
            true,
            (
                conf,
                Isn(40),
                progress(id, to.unwrap_or(0) as i64),
                propagator::database::PutGuard::Load {
                    id: id.into(),
                    next: from,
                },
            ),
            expect,
            None,
        )
    };
    // A first load: 30 records.
    db.put_engine_record(conf, Isn(40), progress("L1", 1))
        .expect("load begins");
    let first = chunk(1, 31, 1);
    let m1 = meta_of(&first);
    load(&db, "L1", 1, None, first.clone(), Some((m1.count, m1.digest))).expect("first load");
    assert_eq!(db.file_info(rep).expect("info").meta, m1);
    db.close().expect("close");
    let (old_store, old_logs) = (t.path().join("old-store"), t.path().join("old-logs"));
    copy_dir(&dir.join("store"), &old_store);
    copy_dir(&dir.join("logs"), &old_logs);

    // The reload empties it, in the entry that begins the load.
    let (db, _) = Database::open(&dir).expect("reopen");
    let before = db.last_lsn();
    db.clear_for_load(rep, (conf, Isn(40), progress("L2", 1)))
        .expect("emptied");
    assert_eq!(
        db.file_info(rep).expect("info").meta,
        propagator::FileMeta::new(rep)
    );
    assert!(dump_raw(&db, rep).is_empty());
    let err = slice_err(&db, &dir, before, rep);
    assert!(
        matches!(err, propagator::slice::SliceError::Cleared { fnr, .. } if fnr == rep),
        "{err}"
    );
    // Only a replicate that is not being restored is emptied.
    let err = db
        .clear_for_load(conf, (conf, Isn(40), progress("L2", 1)))
        .expect_err("a confirmation file");
    assert!(err.to_string().contains("only a replicate file"), "{err}");
    db.close().expect("close");

    // The page store as it was before the entry: replay empties the file.
    swap_stores(&dir, &old_store, &old_logs);
    let (db, report) = Database::open(&dir).expect("reopen, the entry unapplied");
    assert!(report.replayed >= 1, "{report:?}");
    assert!(report.damaged.is_empty(), "{report:?}");
    assert!(dump_raw(&db, rep).is_empty(), "replay did not empty the file");
    assert!(db.check().expect("check").is_ok());

    // The reload's chunks, each in bulk: 20 records, other values.
    let second = chunk(1, 21, 10);
    let m2 = meta_of(&second);
    load(&db, "L2", 1, Some(11), second[..10].to_vec(), None).expect("chunk 1");
    // A crash left records of the next chunk in the page store, never
    // committed: the file is damaged. Emptied from the load's next isn
    // (what lies below is what it counts), the load goes on in bulk.
    db.close().expect("close");
    {
        let s = propagator::store::PageStore::open(&dir.join("store"), ENGINE, 1 << 20, 1 << 20)
            .expect("store");
        s.bulk_put(rep, &second[10..15]).expect("orphans");
    }
    let (db, report) = Database::open(&dir).expect("reopen with orphans");
    assert!(
        report.damaged.iter().any(|(f, _)| *f == rep),
        "{report:?}"
    );
    let after_one = meta_of(&second[..10]);
    assert!(db
        .clear_resumed_load(rep, Isn(11))
        .expect("emptied from 11")
        .is_some());
    let info = db.file_info(rep).expect("info");
    assert_eq!((info.meta, info.damaged), (after_one, None));
    assert_eq!(dump_raw(&db, rep), second[..10].iter().cloned().collect());
    let before_last = db.last_lsn();
    load(&db, "L2", 11, None, second[10..].to_vec(), Some((m2.count, m2.digest)))
        .expect("last chunk");
    let err = slice_err(&db, &dir, before_last, rep);
    assert!(
        matches!(err, propagator::slice::SliceError::Bulk { fnr, first: Isn(11), last: Isn(20), .. } if fnr == rep),
        "{err}"
    );
    assert_eq!(db.file_info(rep).expect("info").meta, m2);
    assert_eq!(dump_raw(&db, rep), second.iter().cloned().collect());
    db.simulate_crash();
    let (db, report) = Database::open(&dir).expect("reopen after a crash");
    assert!(report.damaged.is_empty(), "{report:?}");
    assert_eq!(dump_raw(&db, rep), second.iter().cloned().collect());
    assert!(db.check().expect("check").is_ok());
    db.close().expect("close");

    // Records past the end and one below changed behind the engine's
    // back: emptying from isn 21 would keep the changed one, so nothing
    // is done (the caller rebases instead).
    {
        let s = propagator::store::PageStore::open(&dir.join("store"), ENGINE, 1 << 20, 1 << 20)
            .expect("store");
        s.bulk_put(rep, &chunk(21, 24, 1)).expect("orphans");
        s.bulk_put(rep, &chunk(3, 4, 7)).expect("a changed record");
    }
    let (db, report) = Database::open(&dir).expect("reopen, damaged");
    assert!(report.damaged.iter().any(|(f, _)| *f == rep), "{report:?}");
    let lsn = db.last_lsn();
    assert!(db
        .clear_resumed_load(rep, Isn(21))
        .expect("looked at")
        .is_none());
    assert_eq!(db.last_lsn(), lsn, "something was committed");
}

#[test]
fn a_load_into_an_empty_replicate_goes_in_bulk_and_a_chunk_out_of_sequence_writes_nothing() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("db");
    let db = fresh(&dir);
    let (rep, _) = replicate_files(&db);
    let conf = Fnr(41);
    let progress = |next: i64| {
        let mut r = Record::new();
        r.insert("load_id".into(), Value::Text("L1".into()));
        r.insert("load_next".into(), Value::Int(next));
        r
    };
    db.put_engine_record(conf, Isn(40), progress(1))
        .expect("load begins");
    let chunk = |from: u64, to: u64| -> Vec<(Isn, Vec<u8>)> {
        (from..to)
            .map(|i| {
                let b = propagator::record::encode_record(&rec(&[("v", i as i64)]));
                (Isn(i), b.expect("encode"))
            })
            .collect()
    };
    let guard = |next: u64| propagator::database::PutGuard::Load {
        id: "L1".into(),
        next,
    };
    let load = |from: u64, to: Option<u64>, expect| {
        let recs = chunk(from, to.unwrap_or(31));
        db.load_range(
            rep,
            Isn(from),
            to.map(Isn),
            recs,
            false,
            (conf, Isn(40), progress(to.unwrap_or(0) as i64), guard(from)),
            expect,
            None,
        )
    };
    load(1, Some(11), None).expect("first chunk");
    // The third chunk before the second: refused, and nothing of it is in
    // the page store (it would be records the file does not count).
    let lsn = db.last_lsn();
    let err = load(21, Some(31), None).expect_err("out of sequence");
    assert!(
        matches!(err, DbError::LoadOutOfSequence { .. }),
        "{err:?}"
    );
    assert_eq!(db.last_lsn(), lsn);
    db.wait_applied().expect("applied");
    assert_eq!(dump_raw(&db, rep).len(), 10, "the refused chunk wrote records");
    load(11, Some(21), None).expect("second chunk");
    let mut want = propagator::FileMeta::new(rep);
    for (i, b) in chunk(1, 31) {
        want.change(i, None, Some(&b));
    }
    // A last chunk whose result is not what the load expects writes nothing.
    let err = load(21, None, Some((want.count, propagator::Digest(want.digest.0 ^ 1))))
        .expect_err("wrong digest");
    assert!(err.to_string().contains("nothing written"), "{err}");
    db.wait_applied().expect("applied");
    assert_eq!(dump_raw(&db, rep).len(), 20);
    let before_last = db.last_lsn();
    load(21, None, Some((want.count, want.digest))).expect("last chunk");
    assert_eq!(db.file_info(rep).expect("info").meta, want);
    // Each chunk went in bulk: its entry names it rather than carrying it.
    let err = slice_err(&db, &dir, before_last, rep);
    assert!(
        matches!(err, propagator::slice::SliceError::Bulk { fnr, first: Isn(21), last: Isn(30), .. } if fnr == rep),
        "{err}"
    );
    assert_eq!(dump_raw(&db, rep), chunk(1, 31).into_iter().collect());
    // Each chunk's entry named it: after an unclean stop the rescan and the
    // replay find the file whole.
    db.simulate_crash();
    let (db, report) = Database::open(&dir).expect("reopen");
    assert!(report.damaged.is_empty(), "{report:?}");
    assert_eq!(dump_raw(&db, rep), chunk(1, 31).into_iter().collect());
}

#[test]
fn a_flipped_byte_in_a_bulk_chunks_log_entry_stops_open_naming_segment_and_offset() {
    let t = tempfile::tempdir().expect("tempdir");
    let (mem, db) = fresh_mem(t.path());
    db.begin_restore(PLAIN, "a bulk test").expect("begin");
    let records: Vec<(Isn, Vec<u8>)> = (1..=20)
        .map(|i| (Isn(i), propagator::record::encode_record(&rec(&[("v", i as i64)])).expect("encode")))
        .collect();
    let mut want = propagator::FileMeta::new(PLAIN);
    for (i, b) in &records {
        want.change(*i, None, Some(b));
    }
    let name = segment_name(1);
    let from = data_end(&mem, &name);
    let sum = propagator::database::chunk_sum(&records);
    db.restore_range_queued(
        PLAIN,
        Isn(1),
        None,
        records,
        Some(want),
        propagator::database::Restore::Bulk { sum },
    )
    .expect("bulk chunk")
    .0
    .wait()
    .expect("durable");
    let to = data_end(&mem, &name);
    // Commits after it: the bulk entry is in the middle of the log.
    let mut s = db.session();
    s.store(MASTER, Some(Isn(1)), rec(&[("q", 1)])).expect("store");
    s.et(None).expect("et");
    drop(s);
    db.close().expect("close");
    assert!(to > from, "the bulk chunk wrote no log entry");
    flip(&mem, &name, (from + to) / 2);
    let err = open_mem(t.path(), &mem).err().expect("open must fail");
    assert!(
        matches!(
            err,
            DbError::Log(propagator::plog::LogError::Corrupt { segment: 1, .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("offset"), "{err}");
}

/// A moment without file descriptors (connections holding every one) at a
/// log segment's rotation does not poison the database: the log waits for
/// a descriptor and its commits go through once one is free.
#[test]
fn a_rotation_short_of_descriptors_waits_and_does_not_poison() {
    let t = tempfile::tempdir().expect("tempdir");
    let mem = mem_db(t.path(), 64 << 10);
    let (db, _) = open_mem(t.path(), &mem).expect("open");
    setup(&db);
    mem.no_descriptors_for(3);
    let mut s = db.session();
    let mut isn = 0u64;
    while mem.bytes(&segment_name(3)).is_none() {
        isn += 1;
        assert!(isn < 10_000, "the log never rotated twice");
        let mut r = rec(&[("q", isn as i64)]);
        r.insert("pad".into(), Value::Bytes(vec![1u8; 2000]));
        s.store(MASTER, Some(Isn(isn)), r).expect("store");
        s.et(None)
            .unwrap_or_else(|e| panic!("commit {isn} across a rotation short of descriptors: {e}"));
    }
    drop(s);
    assert_eq!(dump(&db, MASTER).len() as u64, isn);
    assert!(db.check().expect("check").is_ok());
}

/// Updates and deletes that read their records ahead (one scan for a
/// batch, `Session::read_ahead`) see what lookups of their own would: a
/// record another transaction changed after the scan is read again at the
/// commit, an isn with no record is refused, and an ET ends the read-ahead.
#[test]
fn read_ahead_updates_and_deletes_see_what_their_own_lookups_would() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let mut s = db.session();
    for i in (1..=200u64).filter(|i| i % 7 != 0) {
        s.store(MASTER, Some(Isn(i)), rec(&[("qty", i as i64)]))
            .expect("store");
    }
    s.et(None).expect("et");
    let before_all = dump_raw(&db, MASTER);

    // Read ahead over 1..=100; another session then changes isn 50.
    let mut a = db.session();
    let wanted: Vec<Isn> = (1..=100u64).filter(|i| i % 7 != 0).map(Isn).collect();
    a.read_ahead(MASTER, wanted.clone());
    let mut b = db.session();
    b.update(MASTER, Isn(50), rec(&[("qty", 999)]))
        .expect("update 50");
    b.et(None).expect("et b");
    let changed = dump_raw(&db, MASTER)[&Isn(50)].clone();
    for isn in &wanted {
        a.delete(MASTER, *isn).expect("delete");
    }
    a.et(None).expect("et a");
    let mut befores = BTreeMap::new();
    db.for_each_log_record(MASTER, Seq(0), |r| {
        if r.op == LogOp::Delete {
            befores.insert(r.isn, r.before.clone().expect("a delete logs its before-image"));
        }
        Ok(true)
    })
    .expect("log");
    assert_eq!(befores.len(), wanted.len());
    assert_eq!(
        befores[&Isn(50)], changed,
        "the delete logged the record as it was before the other session changed it"
    );
    for isn in wanted.iter().filter(|i| i.0 != 50) {
        assert_eq!(befores[isn], before_all[isn], "isn {isn}");
    }

    // An isn with no record (105 = 7 * 15) is refused, read ahead or not.
    let more: Vec<Isn> = (101..=200u64).map(Isn).collect();
    a.read_ahead(MASTER, more.clone());
    for i in 101..=104u64 {
        a.update(MASTER, Isn(i), rec(&[("qty", -(i as i64))]))
            .expect("update");
    }
    assert!(matches!(
        a.delete(MASTER, Isn(105)),
        Err(DbError::RecordMissing { isn, .. }) if isn == Isn(105)
    ));
    a.bt();

    // An ET ends the read-ahead: what the next transaction reads is read
    // after it.
    a.read_ahead(MASTER, more.clone());
    a.delete(MASTER, Isn(106)).expect("delete 106");
    a.et(None).expect("et");
    a.store(MASTER, Some(Isn(106)), rec(&[("qty", 1)]))
        .expect("store 106 again");
    a.et(None).expect("et");
    a.delete(MASTER, Isn(106))
        .expect("the record stored after the read-ahead is found");
    a.et(None).expect("et");
    assert!(db.check().expect("check").is_ok());
}

/// A read-ahead sees the writes of commits queued but not yet in the page
/// store (a delete among them), an update read ahead is merged with a
/// change made after the scan, and a BT or an abort ends the read-ahead.
#[test]
fn read_ahead_sees_queued_deletes_merges_later_changes_and_ends_with_bt_and_abort() {
    let t = tempfile::tempdir().expect("tempdir");
    let db = fresh(t.path());
    let mut s = db.session();
    for i in (1..=100u64).filter(|i| i % 7 != 0) {
        s.store(MASTER, Some(Isn(i)), rec(&[("qty", i as i64)]))
            .expect("store");
    }
    s.et(None).expect("et");
    let all: Vec<Isn> = (1..=100u64).map(Isn).collect();
    let (mut a, mut b) = (db.session(), db.session());

    // Deleted by a commit that is queued (nobody waits for its sync yet):
    // the read-ahead finds it gone, as a lookup would.
    b.delete(MASTER, Isn(10)).expect("delete 10");
    let queued = b.et_queued(None).expect("queue the delete");
    a.read_ahead(MASTER, all.clone());
    assert!(matches!(
        a.delete(MASTER, Isn(10)),
        Err(DbError::RecordMissing { isn, .. }) if isn == Isn(10)
    ));
    a.bt();
    queued.wait().expect("the delete commits");

    // An update read ahead, whose record another session changes after
    // the scan, is applied to the changed record.
    a.read_ahead(MASTER, all.clone());
    b.update(MASTER, Isn(60), rec(&[("qty", 777)]))
        .expect("update 60");
    b.et(None).expect("et b");
    let patch = propagator::record::encode_record(&rec(&[("extra", 1)])).expect("encode");
    a.update_canonical(MASTER, Isn(60), patch)
        .expect("canonical")
        .expect("update 60 again");
    a.et(None).expect("et a");
    assert_eq!(
        db.read(MASTER, Isn(60)).expect("read"),
        Some(rec(&[("qty", 777), ("extra", 1)]))
    );

    // A BT ends the read-ahead: a record stored after the scan is found.
    a.read_ahead(MASTER, all.clone());
    b.store(MASTER, Some(Isn(14)), rec(&[("qty", 14)]))
        .expect("store 14");
    b.et(None).expect("et b");
    a.bt();
    a.delete(MASTER, Isn(14)).expect("14 is found after the BT");
    a.et(None).expect("et a");

    // So does an abort (a command refused).
    a.read_ahead(MASTER, all.clone());
    assert!(a.delete(MASTER, Isn(21)).is_err(), "21 was never stored");
    b.store(MASTER, Some(Isn(28)), rec(&[("qty", 28)]))
        .expect("store 28");
    b.et(None).expect("et b");
    assert!(matches!(a.et(None), Err(DbError::Aborted(_))));
    a.delete(MASTER, Isn(28)).expect("28 is found after the abort");
    a.et(None).expect("et a");
    assert!(db.check().expect("check").is_ok());
}
