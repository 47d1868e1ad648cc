//! Walking a tree: ask each question of an [`Answers`] source, follow the
//! branch, and return the path taken and the plan of the leaf reached.
//!
//! The library never answers a question itself. The engine implements
//! [`Answers`] by running the node's probe; an interactive front end asks the
//! operator; tests answer from a table.

use serde::Serialize;

use crate::model::{LeafEnd, Node, NodeKind, Step, Tree};
use crate::set::TreeSet;

/// The answer to one question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "answer")]
pub enum Answer {
    /// `evidence` says what the answer rests on (a digest, a copy's date,
    /// a link error), so an operator can check it.
    Yes {
        evidence: String,
    },
    No {
        evidence: String,
    },
    /// The probe could not decide (or the node has no probe and nobody was
    /// asked); the walk stops here.
    Unanswerable {
        reason: String,
    },
}

impl Answer {
    pub fn yes(evidence: impl Into<String>) -> Answer {
        Answer::Yes {
            evidence: evidence.into(),
        }
    }

    pub fn no(evidence: impl Into<String>) -> Answer {
        Answer::No {
            evidence: evidence.into(),
        }
    }

    pub fn unanswerable(reason: impl Into<String>) -> Answer {
        Answer::Unanswerable {
            reason: reason.into(),
        }
    }

    /// `yes`, `no` or `unanswerable`.
    pub fn word(&self) -> &'static str {
        match self {
            Answer::Yes { .. } => "yes",
            Answer::No { .. } => "no",
            Answer::Unanswerable { .. } => "unanswerable",
        }
    }

    /// The evidence or the reason.
    pub fn text(&self) -> &str {
        match self {
            Answer::Yes { evidence } | Answer::No { evidence } => evidence,
            Answer::Unanswerable { reason } => reason,
        }
    }
}

/// Answers the questions of a walk. Only question nodes are passed in.
pub trait Answers {
    type Error;
    fn answer(&mut self, node: &Node) -> Result<Answer, Self::Error>;
}

/// One question on the path and how it was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Visit {
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub question: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    #[serde(flatten)]
    pub answer: Answer,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What the walk ended with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "plan")]
pub enum Plan {
    /// A leaf with steps to perform, in order.
    Actions {
        leaf: String,
        outcome: String,
        steps: Vec<Step>,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// A leaf that hands over to another tree.
    Goto {
        leaf: String,
        outcome: String,
        case: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// A question could not be answered; nothing is to be done automatically.
    Stopped { node: String, reason: String },
}

impl Plan {
    /// The leaf reached, if any.
    pub fn leaf(&self) -> Option<&str> {
        match self {
            Plan::Actions { leaf, .. } | Plan::Goto { leaf, .. } => Some(leaf),
            Plan::Stopped { .. } => None,
        }
    }
}

/// The result of walking one tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Walk {
    pub tree: String,
    pub path: Vec<Visit>,
    pub plan: Plan,
}

/// The result of walking triage and then the case it chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    pub triage: Walk,
    /// Present when triage went to a case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case: Option<Walk>,
}

impl Diagnosis {
    /// The plan to perform: the case's, or triage's own when it did not go
    /// to a case.
    pub fn plan(&self) -> &Plan {
        match &self.case {
            Some(case) => &case.plan,
            None => &self.triage.plan,
        }
    }
}

/// Why a walk could not finish. A validated tree only fails through the
/// answer source.
#[derive(Debug, thiserror::Error)]
pub enum WalkError<E> {
    #[error("answering question `{node}` of {origin} failed")]
    Answers {
        origin: String,
        node: String,
        #[source]
        source: E,
    },
    #[error("{origin}: node `{node}` does not exist (validate the tree before walking it)")]
    Dangling { origin: String, node: String },
    #[error(
        "{origin}: the walk visited node `{node}` twice (validate the tree before walking it)"
    )]
    Cycle { origin: String, node: String },
    #[error("triage goes to tree `{case}`, which is not in the set")]
    UnknownCase { case: String },
    #[error("the set has no `triage` tree to start a diagnosis with")]
    NoTriage,
}

/// Walks `tree` from its start node to a leaf (or to the first question that
/// could not be answered).
pub fn walk<A: Answers>(tree: &Tree, answers: &mut A) -> Result<Walk, WalkError<A::Error>> {
    let mut path: Vec<Visit> = Vec::new();
    let mut current = tree.start.as_str();
    loop {
        let node = tree.node(current).ok_or_else(|| WalkError::Dangling {
            origin: tree.origin.clone(),
            node: current.to_string(),
        })?;
        if path.iter().any(|v| v.node == node.id) {
            return Err(WalkError::Cycle {
                origin: tree.origin.clone(),
                node: node.id.clone(),
            });
        }
        let question = match &node.kind {
            NodeKind::Leaf(leaf) => {
                let plan = match &leaf.end {
                    LeafEnd::Actions(steps) => Plan::Actions {
                        leaf: node.id.clone(),
                        outcome: leaf.outcome.clone(),
                        steps: steps.clone(),
                        note: node.note.clone(),
                    },
                    LeafEnd::Goto(case) => Plan::Goto {
                        leaf: node.id.clone(),
                        outcome: leaf.outcome.clone(),
                        case: case.clone(),
                        note: node.note.clone(),
                    },
                };
                return Ok(Walk {
                    tree: tree.id.clone(),
                    path,
                    plan,
                });
            }
            NodeKind::Question(q) => q,
        };
        let answer = answers.answer(node).map_err(|source| WalkError::Answers {
            origin: tree.origin.clone(),
            node: node.id.clone(),
            source,
        })?;
        let next = match &answer {
            Answer::Yes { .. } => Some(question.yes.as_str()),
            Answer::No { .. } => Some(question.no.as_str()),
            Answer::Unanswerable { .. } => None,
        };
        let stopped = Plan::Stopped {
            node: node.id.clone(),
            reason: answer.text().to_string(),
        };
        path.push(Visit {
            node: node.id.clone(),
            step: node.step.clone(),
            question: question.text.clone(),
            probe: question.probe.clone(),
            answer,
            note: node.note.clone(),
        });
        match next {
            Some(next) => current = next,
            None => {
                return Ok(Walk {
                    tree: tree.id.clone(),
                    path,
                    plan: stopped,
                })
            }
        }
    }
}

/// Walks the set's `triage` tree and, when it names a case, that case's tree,
/// with the same answer source.
pub fn diagnose<A: Answers>(
    set: &TreeSet,
    answers: &mut A,
) -> Result<Diagnosis, WalkError<A::Error>> {
    let triage_tree = set.triage().ok_or(WalkError::NoTriage)?;
    let triage = walk(triage_tree, answers)?;
    let case = match &triage.plan {
        Plan::Goto { case, .. } => {
            let tree = set
                .get(case)
                .ok_or_else(|| WalkError::UnknownCase { case: case.clone() })?;
            Some(walk(tree, answers)?)
        }
        Plan::Actions { .. } | Plan::Stopped { .. } => None,
    };
    Ok(Diagnosis { triage, case })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Always(bool);

    impl Answers for Always {
        type Error = std::convert::Infallible;
        fn answer(&mut self, _: &Node) -> Result<Answer, Self::Error> {
            Ok(if self.0 {
                Answer::yes("always")
            } else {
                Answer::no("never")
            })
        }
    }

    fn parse(body: &str) -> Tree {
        let text = format!("id = \"t\"\ntitle = \"t\"\ndescription = \"d\"\nstart = \"q\"\n{body}");
        Tree::parse(&text, "t.toml").expect("parses")
    }

    #[test]
    fn walk_of_an_unvalidated_cycle_stops_instead_of_looping() {
        let tree = parse(
            "[[node]]\nid = \"q\"\nquestion = \"?\"\nyes = \"r\"\nno = \"q\"\n\
             [[node]]\nid = \"r\"\nquestion = \"?\"\nyes = \"q\"\nno = \"r\"\n",
        );
        let err = walk(&tree, &mut Always(true)).expect_err("cycle");
        assert_eq!(
            err.to_string(),
            "t.toml: the walk visited node `q` twice (validate the tree before walking it)"
        );
    }

    #[test]
    fn walk_of_a_dangling_target_names_it() {
        let tree = parse("[[node]]\nid = \"q\"\nquestion = \"?\"\nyes = \"gone\"\nno = \"gone\"\n");
        let err = walk(&tree, &mut Always(false)).expect_err("dangling");
        assert!(
            err.to_string().contains("node `gone` does not exist"),
            "{err}"
        );
    }

    #[test]
    fn path_records_answers_and_evidence_in_order() {
        let tree = parse(
            "[[node]]\nid = \"q\"\nstep = \"S1\"\nquestion = \"first?\"\nprobe = \"p\"\nyes = \"r\"\nno = \"a\"\n\
             [[node]]\nid = \"r\"\nquestion = \"second?\"\nyes = \"a\"\nno = \"a\"\n\
             [[node]]\nid = \"a\"\noutcome = \"done\"\nnote = \"n\"\nactions = [{ action = \"x\", target = \"$m\" }]\n",
        );
        let walk = walk(&tree, &mut Always(true)).expect("walks");
        let visited: Vec<(&str, &str)> = walk
            .path
            .iter()
            .map(|v| (v.node.as_str(), v.answer.word()))
            .collect();
        assert_eq!(visited, [("q", "yes"), ("r", "yes")]);
        assert_eq!(walk.path[0].step.as_deref(), Some("S1"));
        assert_eq!(walk.path[0].probe.as_deref(), Some("p"));
        match walk.plan {
            Plan::Actions {
                leaf, steps, note, ..
            } => {
                assert_eq!(leaf, "a");
                assert_eq!(steps[0].display(), "x target=$m");
                assert_eq!(note.as_deref(), Some("n"));
            }
            other => panic!("unexpected plan {other:?}"),
        }
    }
}
