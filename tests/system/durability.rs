//! Durability after a failed sync, under a real fault: a node whose
//! `fdatasync` fails (an LD_PRELOAD shim that makes the calls fail with
//! EIO, `tests/fault/fail_sync.c`) never answers a reader with the commit
//! whose sync failed, tells its committer the outcome is unknown, and after
//! a restart the committer's retry under the same id lands exactly once.

use etp_system_tests::{etp, etp_bin, ok};
use maintenance::cluster::NodeProc;
use propagator::node::client::{Client, ClientError};
use propagator::record::encode_record;
use propagator::wire::{Command, ErrorCode, ReadRequest, Request, Response, SessionRequest};
use propagator::{Fnr, Isn, Record, Value};
use serde_bytes::ByteBuf;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const FILE: Fnr = Fnr(10);

/// Compiles the shim into `dir` with the machine's C compiler.
fn shim(dir: &Path) -> PathBuf {
    let src = dir.join("fail_sync.c");
    std::fs::write(&src, include_str!("../fault/fail_sync.c")).expect("shim source");
    let so = dir.join("fail_sync.so");
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("running cc (the fault shim needs a C compiler)");
    assert!(out.status.success(), "cc failed: {out:?}");
    so
}

fn store(isn: u64, id: &str) -> Request {
    store_at(Some(isn), isn, id)
}

/// A transaction `id` storing `{q}` at `isn` (None: the next isn).
fn store_at(isn: Option<u64>, q: u64, id: &str) -> Request {
    let mut r = Record::new();
    r.insert("q".into(), Value::Int(q as i64));
    Request::Session(SessionRequest::Batch(vec![
        Command::Store {
            file: FILE,
            isn: isn.map(Isn),
            fields: ByteBuf::from(encode_record(&r).expect("encode")),
        },
        Command::Et {
            id: Some(id.into()),
        },
    ]))
}

/// Whether an answer shows record `isn`, or a file of `isn` records.
fn shows(resp: &Response, isn: u64) -> bool {
    match resp {
        Response::Record(Some(_)) => true,
        Response::Records { items, .. } => items.iter().any(|(i, _)| i.0 == isn),
        Response::Stat { count, .. } => *count >= isn,
        _ => false,
    }
}

#[test]
fn a_failed_fdatasync_is_never_served_and_its_committer_hears_outcome_unknown() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let so = shim(tmp.path());
    let trigger = tmp.path().join("fail-sync");
    let d = tmp.path().join("db");
    let ds = d.to_str().expect("utf-8");
    ok(&etp(&["db", "init", "--data", ds, "--dbid", "1"]));
    ok(&etp(&[
        "file", "create", "--data", ds, "--file", "10", "--name", "t",
    ]));
    let env = [
        ("LD_PRELOAD", so.to_str().expect("utf-8")),
        ("ETP_FAIL_SYNC", trigger.to_str().expect("utf-8")),
    ];
    let any = "127.0.0.1:0".parse().expect("addr");
    let mut node = NodeProc::start_with_env(etp_bin(), &d, 1, any, &[], &env).expect("node");
    let addr = node.addr;
    let mut c = Client::connect(addr).expect("connect");
    for i in 1..=10 {
        c.call(&store(i, &format!("t{i}")))
            .expect("a commit before the fault");
    }

    // Readers ask for record 11 all the time, each way a client reads:
    // a session's read, a dump page, the file's count.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|kind| {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || -> Vec<String> {
                let mut seen = Vec::new();
                let Ok(mut r) = Client::connect(addr) else {
                    return vec!["no connection".into()];
                };
                while !stop.load(Ordering::Relaxed) {
                    let req = match kind {
                        0 => Request::Session(SessionRequest::Batch(vec![Command::Read {
                            file: FILE,
                            isn: Isn(11),
                            stale: false,
                        }])),
                        1 => Request::Read(ReadRequest::Dump {
                            file: FILE,
                            from: Isn(11),
                            limit: 10,
                            stale: false,
                        }),
                        _ => Request::Read(ReadRequest::FileStat { file: FILE }),
                    };
                    match r.call(&req) {
                        Ok(resp) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            if shows(&resp, 11) {
                                seen.push(format!("{resp:?}"));
                            }
                        }
                        // Refused (the gate's Unavailable): asked all the same.
                        Err(ClientError::Remote { .. }) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => match Client::connect(addr) {
                            Ok(n) => r = n,
                            Err(_) => break,
                        },
                    }
                }
                seen
            })
        })
        .collect();
    etp_system_tests::wait_for(
        "the readers answered",
        std::time::Duration::from_secs(30),
        || (answered.load(Ordering::Relaxed) > 30).then_some(()),
    );

    // The disk starts failing its syncs (each takes 300 ms, then EIO).
    std::fs::write(&trigger, b"").expect("trigger");
    let before = answered.load(Ordering::Relaxed);
    match c.call(&store(11, "t11")) {
        Err(ClientError::Remote { code, message, .. }) => {
            assert_eq!(code, ErrorCode::OutcomeUnknown, "{message}");
            assert!(message.contains("not known"), "{message}");
        }
        other => panic!("the commit whose sync failed answered {other:?}"),
    }
    // A commit after it is refused as not committed.
    match c.call(&store(12, "t12")) {
        Err(ClientError::Remote { code, .. }) => assert_eq!(code, ErrorCode::Unavailable),
        other => panic!("a commit after the failed sync answered {other:?}"),
    }
    stop.store(true, Ordering::Relaxed);
    let mut shown = Vec::new();
    for h in readers {
        shown.extend(h.join().expect("reader"));
    }
    assert!(
        shown.is_empty(),
        "a reader was answered {} times with the commit whose sync failed, first: {:?}",
        shown.len(),
        shown.first()
    );
    assert!(
        answered.load(Ordering::Relaxed) > before,
        "the readers kept asking"
    );
    let log = std::fs::read_to_string(d.with_extension("node.log")).unwrap_or_default();
    assert!(log.contains("stops accepting commits"), "{log}");

    // Restarted on a good disk: the failed write may or may not have
    // reached the disk, and the retry under the same id lands exactly once.
    node.kill();
    std::fs::remove_file(&trigger).expect("untrigger");
    node.restart().expect("restart");
    let mut c = Client::connect(node.addr).expect("connect");
    let stat = |c: &mut Client| match c
        .call(&Request::Read(ReadRequest::FileStat { file: FILE }))
        .expect("stat")
    {
        Response::Stat { count, .. } => count,
        other => panic!("{other:?}"),
    };
    let recovered = stat(&mut c);
    match (recovered, c.call(&store_at(None, 11, "t11"))) {
        (
            11,
            Err(ClientError::Remote {
                code: ErrorCode::AlreadyCommitted { .. },
                ..
            }),
        )
        | (10, Ok(Response::Committed(_))) => {}
        other => panic!("recovered {recovered} records; the retry answered {other:?}"),
    }
    assert_eq!(stat(&mut c), 11);
}
