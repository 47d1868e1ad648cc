//! The typed tree and its TOML form.
//!
//! A tree file is a table with `id`, `title`, `description`, `start` and an
//! array of `[[node]]` tables. A node is either a **question** (`question`,
//! optional `probe`, `yes`, `no`) or a **leaf** (`outcome` plus either
//! `actions` or `goto`). Both kinds take an optional `step` (the step label
//! of DOMAIN.md §2, e.g. `C2.4a`) and `note` (the seed's note for this node).
//! The full key list is in the crate README.
//!
//! Parsing checks the shape of each node (a question has both branches, a
//! leaf has a non-empty plan, no node is both); everything that needs the
//! whole tree or a [`Registry`](crate::Registry) is checked by
//! [`validate`](crate::validate).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::FlowError;
use crate::validate::{Invalid, Problem};

/// One decision tree: a recovery case, or the triage that picks the case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tree {
    /// Stable name, equal to the file stem (`case2_replicate`).
    pub id: String,
    pub title: String,
    pub description: String,
    /// Id of the first node a walk visits.
    pub start: String,
    /// Where the text came from (a file name); every error names it.
    pub origin: String,
    /// Nodes in file order; rendering follows this order.
    pub nodes: Vec<Node>,
}

/// A question or a leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub id: String,
    /// The step label of the reconstruction in DOMAIN.md §2 (`T2`, `C4.5`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The seed's note (or the reconstruction's reason) attached to this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum NodeKind {
    Question(Question),
    Leaf(Leaf),
}

/// A yes/no question. With a probe the engine can answer it from the live
/// system; without one only an operator can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Question {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    pub yes: String,
    pub no: String,
}

/// Where a walk ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leaf {
    /// One sentence saying what the plan achieves.
    pub outcome: String,
    pub end: LeafEnd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeafEnd {
    /// Steps the maintenance utility performs, in order.
    Actions(Vec<Step>),
    /// Continue with another tree (triage leaves name a recovery case).
    Goto(String),
}

/// One action of a plan with its parameters (`target = "$unit"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub action: String,
    #[serde(flatten)]
    pub params: BTreeMap<String, String>,
}

impl Node {
    pub fn question(&self) -> Option<&Question> {
        match &self.kind {
            NodeKind::Question(q) => Some(q),
            NodeKind::Leaf(_) => None,
        }
    }

    pub fn leaf(&self) -> Option<&Leaf> {
        match &self.kind {
            NodeKind::Leaf(l) => Some(l),
            NodeKind::Question(_) => None,
        }
    }

    /// The nodes this one points to, `yes` first.
    pub fn targets(&self) -> Vec<(&'static str, &str)> {
        match &self.kind {
            NodeKind::Question(q) => vec![("yes", q.yes.as_str()), ("no", q.no.as_str())],
            NodeKind::Leaf(_) => Vec::new(),
        }
    }
}

impl Step {
    /// `restore_copy_set target=$unit` — the form used in renders and testdata.
    pub fn display(&self) -> String {
        let mut text = self.action.clone();
        for (key, value) in &self.params {
            text.push(' ');
            text.push_str(key);
            text.push('=');
            if value.contains(char::is_whitespace) {
                text.push_str(&format!("{value:?}"));
            } else {
                text.push_str(value);
            }
        }
        text
    }
}

impl Tree {
    /// Parses one tree from TOML text. `origin` (usually the file name) is
    /// carried into every error so the operator knows which file to fix.
    pub fn parse(text: &str, origin: &str) -> Result<Tree, FlowError> {
        let raw: RawTree = toml::from_str(text).map_err(|e| FlowError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        let mut problems = Vec::new();
        let mut nodes = Vec::with_capacity(raw.node.len());
        for raw_node in raw.node {
            match raw_node.into_node() {
                Ok(node) => nodes.push(node),
                Err(problem) => problems.push(problem),
            }
        }
        if !problems.is_empty() {
            return Err(FlowError::Invalid(Invalid {
                origin: origin.to_string(),
                problems,
            }));
        }
        Ok(Tree {
            id: raw.id,
            title: raw.title,
            description: raw.description,
            start: raw.start,
            origin: origin.to_string(),
            nodes,
        })
    }

    /// The node with this id (the first one, should ids repeat).
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Leaf nodes in file order.
    pub fn leaves(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.leaf().is_some())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTree {
    id: String,
    title: String,
    description: String,
    start: String,
    #[serde(default)]
    node: Vec<RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    step: Option<String>,
    note: Option<String>,
    question: Option<String>,
    probe: Option<String>,
    yes: Option<String>,
    no: Option<String>,
    outcome: Option<String>,
    actions: Option<Vec<Step>>,
    goto: Option<String>,
}

impl RawNode {
    fn into_node(self) -> Result<Node, Problem> {
        let id = self.id;
        let shape = |detail: &str| Problem::Shape {
            node: id.clone(),
            detail: detail.to_string(),
        };
        let is_leaf = self.outcome.is_some() || self.actions.is_some() || self.goto.is_some();
        let kind = match (self.question, is_leaf) {
            (Some(_), true) => {
                return Err(shape(
                    "has both `question` and leaf keys (`outcome`, `actions`, `goto`)",
                ))
            }
            (None, false) => {
                return Err(shape(
                    "is neither a question nor a leaf: give `question` or `outcome`",
                ))
            }
            (Some(text), false) => {
                let (yes, no) = match (self.yes, self.no) {
                    (Some(yes), Some(no)) => (yes, no),
                    (None, _) => {
                        return Err(Problem::OpenBranch {
                            node: id,
                            branch: "yes",
                        })
                    }
                    (_, None) => {
                        return Err(Problem::OpenBranch {
                            node: id,
                            branch: "no",
                        })
                    }
                };
                NodeKind::Question(Question {
                    text,
                    probe: self.probe,
                    yes,
                    no,
                })
            }
            (None, true) => {
                if self.probe.is_some() || self.yes.is_some() || self.no.is_some() {
                    return Err(shape("is a leaf but has `probe`, `yes` or `no`"));
                }
                let outcome = self
                    .outcome
                    .ok_or_else(|| shape("is a leaf without `outcome`"))?;
                let end = match (self.actions, self.goto) {
                    (Some(_), Some(_)) => return Err(shape("has both `actions` and `goto`")),
                    (None, None) => return Err(Problem::EmptyLeaf { node: id }),
                    (Some(actions), None) if actions.is_empty() => {
                        return Err(Problem::EmptyLeaf { node: id })
                    }
                    (Some(actions), None) => LeafEnd::Actions(actions),
                    (None, Some(case)) => LeafEnd::Goto(case),
                };
                NodeKind::Leaf(Leaf { outcome, end })
            }
        };
        Ok(Node {
            id,
            step: self.step,
            note: self.note,
            kind,
        })
    }
}
