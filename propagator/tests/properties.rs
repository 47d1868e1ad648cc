//! Properties the engine relies on, over random inputs (proptest):
//! - a file digest does not depend on the order records were added, and
//!   removing a record undoes adding it;
//! - records, wire messages and log records survive encode/decode;
//! - a partial replicate's view (selection over the full record, then
//!   projection) agrees with a small reference evaluator of the predicates.

use propagator::digest::FileMeta;
use propagator::predicate::{project, Predicate};
use propagator::record::{decode_record, encode_record, Record, Value};
use propagator::wire::{Command, ErrorCode, ReplChange, Request, Response};
use propagator::wire::{LinkRequest, SessionRequest};
use propagator::{Fnr, Isn, Lsn, Seq};
use proptest::prelude::*;
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        // NaN never equals itself: finite floats only.
        (-1e12f64..1e12).prop_map(Value::Float),
        "[a-zA-Z0-9 ]{0,12}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    proptest::collection::btree_map("[a-z_]{1,8}", value(), 0..8)
}

/// Distinct isns with encoded records.
fn file_content() -> impl Strategy<Value = BTreeMap<u64, Vec<u8>>> {
    proptest::collection::btree_map(
        1u64..10_000,
        record().prop_map(|r| encode_record(&r).expect("small records encode")),
        0..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_digest_is_independent_of_order_and_removal_undoes_addition(
        content in file_content(),
        seed in any::<u64>(),
        keep in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let items: Vec<(u64, Vec<u8>)> = content.into_iter().collect();
        let mut forward = FileMeta::new(Fnr(1));
        for (i, b) in &items {
            forward.change(Isn(*i), None, Some(b));
        }
        // Another order: a seeded shuffle.
        let mut shuffled = items.clone();
        fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
        let mut other = FileMeta::new(Fnr(1));
        for (i, b) in &shuffled {
            other.change(Isn(*i), None, Some(b));
        }
        prop_assert_eq!(forward.digest, other.digest);
        prop_assert_eq!(forward.count, other.count);
        // Removing some records equals never having added them.
        let mut removed = forward;
        let mut kept = FileMeta::new(Fnr(1));
        for (k, (i, b)) in items.iter().enumerate() {
            if keep.get(k).copied().unwrap_or(true) {
                kept.change(Isn(*i), None, Some(b));
            } else {
                removed.change(Isn(*i), Some(b), None);
            }
        }
        prop_assert_eq!(removed.digest, kept.digest);
        prop_assert_eq!(removed.count, kept.count);
    }

    #[test]
    fn a_record_survives_encode_and_decode(r in record()) {
        let bytes = encode_record(&r).expect("encode");
        prop_assert_eq!(decode_record(&bytes).expect("decode"), r.clone());
        // Canonical: the same record always encodes to the same bytes.
        prop_assert_eq!(encode_record(&r).expect("encode"), bytes);
    }

    #[test]
    fn wire_messages_survive_encode_and_decode(
        cmds in proptest::collection::vec((1u32..300, proptest::option::of(1u64..1000), record()), 0..6),
        follows in 0u64..1_000_000,
        changes in proptest::collection::vec((1u64..1000, proptest::option::of(record()), proptest::option::of(record())), 0..6),
        message in "[ -~]{0,40}",
        lsn in any::<u64>(),
    ) {
        let enc = |r: &Record| ByteBuf::from(encode_record(r).expect("encode"));
        let batch = Request::Session(SessionRequest::Batch(
            cmds.iter()
                .map(|(f, i, r)| Command::Store { file: Fnr(*f), isn: i.map(Isn), fields: enc(r) })
                .chain([Command::Et { id: Some(message.clone()) }])
                .collect(),
        ));
        let apply = Request::Link(LinkRequest::LinkApply {
            follows: Seq(follows),
            changes: changes
                .iter()
                .map(|(i, b, a)| ReplChange { isn: Isn(*i), before: b.as_ref().map(enc), after: a.as_ref().map(enc) })
                .collect(),
            confirmation: propagator::wire::Confirmation {
                replicate: message.clone(),
                master_db: propagator::DbId(1),
                master: Fnr(10),
                seq: Seq(follows + 1),
                incarnation: 1,
                master_time_us: 5,
                digest: propagator::Digest(u128::from(lsn) << 64 | u128::from(follows)),
                count: 3,
                applied_us: 0,
                loaded_by: None,
            },
            txn_ends: vec![(Seq(follows + 1), 7)],
        });
        // Encoding is deterministic, so a message that survives decoding
        // re-encodes to the same bytes.
        for req in [batch, apply] {
            let b = req.encode().expect("encode");
            let back = Request::decode(&b).expect("decode");
            prop_assert_eq!(back.encode().expect("re-encode"), b);
        }
        for code in [ErrorCode::Other, ErrorCode::AlreadyCommitted { lsn: Lsn(lsn) }, ErrorCode::OutOfSequence] {
            let resp = Response::Error { code, message: message.clone() };
            let b = resp.encode().expect("encode");
            match Response::decode(&b).expect("decode") {
                Response::Error { code: c, message: m } => {
                    prop_assert_eq!(c, code);
                    prop_assert_eq!(m, message.clone());
                }
                other => prop_assert!(false, "decoded as {:?}", other),
            }
        }
    }
}

// ------------------------------------------------------------ predicates

/// A predicate of a small grammar over int fields `a`, `b`, `c`, with its
/// CEL source and a reference evaluation.
#[derive(Clone, Debug)]
enum Expr {
    Cmp(&'static str, &'static str, i64),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
}

impl Expr {
    fn source(&self) -> String {
        match self {
            Expr::Cmp(f, op, k) => format!("{f} {op} {k}"),
            Expr::And(x, y) => format!("({} && {})", x.source(), y.source()),
            Expr::Or(x, y) => format!("({} || {})", x.source(), y.source()),
            Expr::Not(x) => format!("!({})", x.source()),
        }
    }

    fn eval(&self, r: &BTreeMap<&str, i64>) -> bool {
        match self {
            Expr::Cmp(f, op, k) => {
                let v = r[f];
                match *op {
                    "==" => v == *k,
                    "!=" => v != *k,
                    "<" => v < *k,
                    "<=" => v <= *k,
                    ">" => v > *k,
                    _ => v >= *k,
                }
            }
            Expr::And(x, y) => x.eval(r) && y.eval(r),
            Expr::Or(x, y) => x.eval(r) || y.eval(r),
            Expr::Not(x) => !x.eval(r),
        }
    }
}

fn expr() -> impl Strategy<Value = Expr> {
    let leaf = (
        prop_oneof![Just("a"), Just("b"), Just("c")],
        prop_oneof![
            Just("=="),
            Just("!="),
            Just("<"),
            Just("<="),
            Just(">"),
            Just(">=")
        ],
        -5i64..5,
    )
        .prop_map(|(f, op, k)| Expr::Cmp(f, op, k));
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(x, y)| Expr::And(Box::new(x), Box::new(y))),
            (inner.clone(), inner.clone()).prop_map(|(x, y)| Expr::Or(Box::new(x), Box::new(y))),
            inner.prop_map(|x| Expr::Not(Box::new(x))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn selection_then_projection_agrees_with_a_reference_evaluator(
        e in expr(),
        a in -6i64..6, b in -6i64..6, c in -6i64..6,
        note in "[a-z]{0,6}",
        fields in proptest::sample::subsequence(vec!["a", "b", "c", "note"], 0..=4),
    ) {
        let known: Vec<String> = ["a", "b", "c", "note"].iter().map(|s| s.to_string()).collect();
        let p = Predicate::compile(&e.source(), &known).expect("the grammar compiles");
        let mut r = Record::new();
        r.insert("a".into(), Value::Int(a));
        r.insert("b".into(), Value::Int(b));
        r.insert("c".into(), Value::Int(c));
        r.insert("note".into(), Value::Text(note));
        let ints: BTreeMap<&str, i64> = [("a", a), ("b", b), ("c", c)].into_iter().collect();
        let want = e.eval(&ints);
        prop_assert_eq!(p.selects(&r), want, "{}", e.source());
        // Projection keeps exactly the listed fields the record has.
        let fields: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
        let projected = project(&r, &fields);
        let names: Vec<&String> = projected.keys().collect();
        let mut listed: Vec<&String> = fields.iter().collect();
        listed.sort();
        prop_assert_eq!(names, listed);
        for (k, v) in &projected {
            prop_assert_eq!(Some(v), r.get(k));
        }
    }

    /// A record without a field the predicate reads is never selected,
    /// whatever the predicate (it cannot be evaluated on it).
    #[test]
    fn a_record_missing_a_field_of_a_comparison_is_not_selected(
        f in prop_oneof![Just("a"), Just("b")],
        op in prop_oneof![Just("=="), Just("!="), Just("<"), Just(">=")],
        k in -5i64..5,
    ) {
        let known: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let p = Predicate::compile(&format!("{f} {op} {k}"), &known).expect("compiles");
        let mut r = Record::new();
        let other = if f == "a" { "b" } else { "a" };
        r.insert(other.into(), Value::Int(k));
        prop_assert!(!p.selects(&r));
    }
}
