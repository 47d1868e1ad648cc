//! The fuzz targets on stable, as part of the test suite: every committed
//! corpus input (`fuzz/corpus/TARGET/`, seeds and what libFuzzer kept), then
//! random mutations of them, through each target. A panic fails the test
//! and names the input. `ETP_FUZZ_SEEDS=1` (re)writes the seed inputs from
//! real files this test makes.

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir(target))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    std::fs::read(e.path()).ok().map(|b| (name, b))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// One random change: a flipped bit, a byte set, a cut, an insertion, or a
/// run duplicated.
fn mutate(rng: &mut fastrand::Rng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.usize(1..4) {
        let n = b.len();
        match rng.u8(0..5) {
            0 if n > 0 => b[rng.usize(0..n)] ^= 1 << rng.u8(0..8),
            1 if n > 0 => b[rng.usize(0..n)] = rng.u8(..),
            2 if n > 0 => b.truncate(rng.usize(0..n)),
            3 => {
                let at = rng.usize(0..=n);
                let k = rng.usize(1..16);
                let bytes: Vec<u8> = (0..k).map(|_| rng.u8(..)).collect();
                b.splice(at..at, bytes);
            }
            _ if n > 1 => {
                let s = rng.usize(0..n);
                let e = rng.usize(s..n.min(s + 64));
                let run = b[s..e].to_vec();
                let at = rng.usize(0..=b.len());
                b.splice(at..at, run);
            }
            _ => b.push(rng.u8(..)),
        }
    }
    b
}

/// Runs on a thread with a tokio blocking thread's 2 MiB stack (a node
/// restores a copy on one): a crafted copy frame nested hundreds deep
/// overflowed it until frames were decoded with a depth bound.
#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(replay)
        .expect("a thread")
        .join()
        .expect("the replay passed");
}

fn replay() {
    if std::env::var_os("ETP_FUZZ_SEEDS").is_some() {
        seeds::write();
    }
    let mut rng = fastrand::Rng::with_seed(20261207);
    for (target, run) in etp_fuzzing::TARGETS {
        let corpus = inputs(target);
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{target} is empty (ETP_FUZZ_SEEDS=1 writes its seeds)"
        );
        for (name, bytes) in &corpus {
            let r = std::panic::catch_unwind(|| run(bytes));
            assert!(r.is_ok(), "{target}: corpus input {name} panicked");
        }
        for i in 0..1500 {
            let (name, base) = &corpus[rng.usize(0..corpus.len())];
            let input = mutate(&mut rng, base.clone());
            let r = std::panic::catch_unwind(|| run(&input));
            assert!(
                r.is_ok(),
                "{target}: mutation {i} of {name} panicked; input {:?}",
                input
            );
        }
    }
}

/// The seed inputs, made from real files.
mod seeds {
    use super::corpus_dir;
    use propagator::catalog::Role;
    use propagator::record::encode_record;
    use propagator::wire::{Command, ReadRequest, Request, Response, SessionRequest};
    use propagator::{Database, DbId, Fnr, Isn, Record, Value};

    fn put(target: &str, name: &str, bytes: &[u8]) {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed");
    }

    fn rec(id: i64) -> Record {
        let mut r = Record::new();
        r.insert("id".into(), Value::Int(id));
        r.insert("grp".into(), Value::Int(id % 3));
        r.insert("name".into(), Value::Text(format!("n{id}")));
        r
    }

    fn framed(b: &[u8]) -> Vec<u8> {
        let mut out = (b.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(b);
        out
    }

    pub fn write() {
        // Frames: real requests and answers, each framed, and two in a row.
        let store = Request::Session(SessionRequest::Batch(vec![
            Command::Store {
                file: Fnr(10),
                isn: Some(Isn(1)),
                fields: serde_bytes::ByteBuf::from(encode_record(&rec(1)).expect("encode")),
            },
            Command::Et {
                id: Some("t1".into()),
            },
        ]));
        let info = Request::Read(ReadRequest::Info);
        let dump = Request::Read(ReadRequest::Dump {
            file: Fnr(10),
            from: Isn(1),
            limit: 100,
            stale: false,
        });
        let mut two = Vec::new();
        for (i, r) in [store, info, dump].iter().enumerate() {
            let b = framed(&r.encode().expect("encode"));
            put("frames", &format!("request{i}"), &b);
            two.extend_from_slice(&b);
        }
        put("frames", "two-requests", &two);
        let resp = Response::Records {
            items: vec![(
                Isn(1),
                serde_bytes::ByteBuf::from(encode_record(&rec(1)).expect("encode")),
            )],
            done: true,
            is_log: false,
        };
        put(
            "frames",
            "response",
            &framed(&resp.encode().expect("encode")),
        );

        // A database: its protection-log segment and a copy of its master.
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("db");
        Database::init(&d, DbId(1), Some(64 << 10)).expect("init");
        let (db, _) = Database::open(&d).expect("open");
        db.create_file(Fnr(10), "orders", Role::Plain)
            .expect("file");
        db.define_master(Fnr(10), Fnr(11)).expect("master");
        for i in 1..=20 {
            let mut s = db.session();
            s.store(Fnr(10), Some(Isn(i)), rec(i as i64))
                .expect("store");
            s.et(Some(format!("t{i}"))).expect("et");
        }
        let mem = propagator::medium::MemDir::new();
        let copied = propagator::copy::take(&db, &[Fnr(10), Fnr(11)], &mem, "seed", &mut |_| {})
            .expect("copy");
        for (i, f) in copied.files.iter().enumerate() {
            if let Some(b) = mem.bytes(&f.name) {
                // Raw (odd mode byte), and as the payloads to frame (even).
                let mut raw = vec![1u8];
                raw.extend_from_slice(&b);
                put("copy_file", &format!("member{i}"), &raw);
                let mut payloads = vec![0u8];
                let mut at = 8;
                while at + 8 <= b.len() {
                    let n = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
                    let Some(p) = b.get(at + 8..at + 8 + n) else {
                        break;
                    };
                    if let Ok(n16) = u16::try_from(n) {
                        payloads.extend_from_slice(&n16.to_be_bytes());
                        payloads.extend_from_slice(p);
                    }
                    at += 8 + n;
                }
                put("copy_file", &format!("member{i}-frames"), &payloads);
            }
        }
        db.close().expect("close");
        let seg = std::fs::read(
            d.join("plog")
                .join(propagator::plog::format::segment_name(1)),
        )
        .expect("segment");
        let end = seg.iter().rposition(|x| *x != 0).map_or(0, |i| i + 1);
        let mut raw = vec![1u8];
        raw.extend_from_slice(&seg[..end]);
        put("plog", "segment", &raw);
        // Structured: entries the writer frames (2-byte length, payload).
        let mut entries = vec![0u8];
        for p in [&b"\x81\xa1x\x01"[..], &[0x92, 0x01, 0x02], &[]] {
            entries.extend_from_slice(&(p.len() as u16).to_be_bytes());
            entries.extend_from_slice(p);
        }
        put("plog", "entries", &entries);

        // A client journal with entries in each state.
        let jd = t.path().join("journal");
        {
            let mut j = maintenance::journal::Journal::open(&jd).expect("journal");
            let a = j
                .add(
                    "id-a".into(),
                    vec![r#"{"store":{"file":10,"fields":{"id":1}}}"#.into()],
                )
                .expect("add");
            let b = j.add("id-b".into(), vec!["et".into()]).expect("add");
            j.attempt_failed(a, "unreachable").expect("attempt");
            j.done(a, 42, false).expect("done");
            j.failed(b, "refused").expect("failed");
        }
        for e in std::fs::read_dir(&jd).expect("journal dir") {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with('.') && !name.contains("lock") {
                put("journal", &name, &std::fs::read(e.path()).expect("read"));
            }
        }

        // Texts: the example topology, predicates, the built-in trees, exec lines.
        put(
            "topology",
            "example",
            include_str!("../../examples/topology.toml").as_bytes(),
        );
        for (i, p) in [
            "grp == 1",
            "qty > 2.0 && name.startsWith('n')",
            "[1, 2, 3].all(x, x > 0) || id in [1, 7]",
            "has(name) ? size(name) > 1 : false\u{0}\u{83}\u{a2}id\u{07}",
            "int(qty) % 2 == 0 && tags.exists(t, t == 'a')",
        ]
        .iter()
        .enumerate()
        {
            put("predicate", &format!("p{i}"), p.as_bytes());
        }
        for (file, text) in flowcharts::BUILTIN {
            put("flowchart", &file.replace('/', "_"), text.as_bytes());
        }
        put(
            "exec_line",
            "lines",
            br#"{"store":{"file":10,"isn":5,"fields":{"id":5,"name":"x"}}}
{"update":{"file":10,"isn":5,"fields":{"qty":2.5}}}
{"read":{"file":10,"isn":5}}
{"delete":{"file":10,"isn":5}}
{"et":{"id":"t-1"}}
{"bt":{}}
"#,
        );
    }
}
