//! Every combination of yes/no answers walks every shipped tree to a leaf,
//! and together the combinations reach every leaf (no proptest: the trees are
//! small enough to enumerate, and a seeded generator covers diagnose).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use flowcharts::{Answer, Answers, Node, Plan};

use crate::builtin;

/// Answers each question node from a bit of `bits`, by the node's index.
struct Bits {
    index: BTreeMap<String, usize>,
    bits: u64,
}

impl Answers for Bits {
    type Error = Infallible;
    fn answer(&mut self, node: &Node) -> Result<Answer, Infallible> {
        let i = self.index[&node.id];
        Ok(if self.bits >> i & 1 == 1 {
            Answer::yes("bit set")
        } else {
            Answer::no("bit clear")
        })
    }
}

#[test]
fn every_answer_combination_ends_at_a_leaf() {
    for tree in builtin().trees() {
        let index: BTreeMap<String, usize> = tree
            .nodes
            .iter()
            .filter(|n| n.question().is_some())
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        assert!(index.len() < 20, "{} is too big to enumerate", tree.id);
        let mut reached = BTreeSet::new();
        for bits in 0..(1u64 << index.len()) {
            let mut answers = Bits {
                index: index.clone(),
                bits,
            };
            let walk = flowcharts::walk(tree, &mut answers).expect("walk");
            let leaf = walk.plan.leaf().expect("every yes/no walk ends at a leaf");
            assert!(
                walk.path.len() <= index.len(),
                "{}: path longer than the tree",
                tree.id
            );
            reached.insert(leaf.to_string());
        }
        let leaves: BTreeSet<String> = tree.leaves().map(|n| n.id.clone()).collect();
        assert_eq!(
            reached, leaves,
            "{}: leaves no answer combination reaches",
            tree.id
        );
    }
}

/// xorshift64: deterministic, no dependency.
struct Random(u64);

impl Answers for Random {
    type Error = Infallible;
    fn answer(&mut self, _: &Node) -> Result<Answer, Infallible> {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Ok(match self.0 % 8 {
            0 => Answer::unanswerable("probe timed out"),
            n if n % 2 == 0 => Answer::yes("random"),
            _ => Answer::no("random"),
        })
    }
}

#[test]
fn random_diagnoses_end_in_a_plan_or_a_stop() {
    let set = builtin();
    let mut answers = Random(0x9e37_79b9_7f4a_7c15);
    let mut cases = BTreeSet::new();
    for _ in 0..20_000 {
        let diagnosis = flowcharts::diagnose(&set, &mut answers).expect("diagnose");
        match (&diagnosis.triage.plan, &diagnosis.case) {
            (Plan::Goto { case, .. }, Some(walk)) => {
                assert_eq!(&walk.tree, case);
                assert!(
                    !matches!(walk.plan, Plan::Goto { .. }),
                    "a case never goes on"
                );
                cases.insert(case.clone());
            }
            (Plan::Goto { .. }, None) => panic!("triage named a case that was not walked"),
            (_, Some(_)) => panic!("a case was walked without triage naming it"),
            (_, None) => {}
        }
        match diagnosis.plan() {
            Plan::Actions { steps, .. } => assert!(!steps.is_empty()),
            Plan::Stopped { reason, .. } => assert_eq!(reason, "probe timed out"),
            Plan::Goto { .. } => panic!("the final plan is never a goto"),
        }
    }
    assert_eq!(cases.len(), 5, "random triage reached only {cases:?}");
}
