//! Structural and vocabulary checks of one tree.
//!
//! A tree that passes [`validate`] is a finite DAG rooted at `start` in which
//! every node is reachable, every question has two existing targets, and
//! every path ends at a leaf whose actions (or goto) the caller knows. That
//! is what lets [`walk`](crate::walk) promise to end at a leaf.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::model::{LeafEnd, NodeKind, Tree};
use crate::registry::Registry;

/// Ids that would clash with Mermaid keywords.
const RESERVED_IDS: &[&str] = &["end", "graph", "subgraph", "flowchart"];

/// Everything wrong with one tree file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invalid {
    /// The tree file (or other origin) the problems are in.
    pub origin: String,
    pub problems: Vec<Problem>,
}

/// One reason a tree is refused. Each names the node it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "problem")]
pub enum Problem {
    EmptyTree,
    Shape {
        node: String,
        detail: String,
    },
    BadId {
        node: String,
    },
    OpenBranch {
        node: String,
        branch: &'static str,
    },
    EmptyLeaf {
        node: String,
    },
    DuplicateNode {
        node: String,
    },
    MissingStart {
        start: String,
    },
    DanglingTarget {
        node: String,
        branch: &'static str,
        target: String,
    },
    Unreachable {
        node: String,
    },
    Cycle {
        path: Vec<String>,
    },
    UnknownProbe {
        node: String,
        probe: String,
    },
    UnknownAction {
        node: String,
        action: String,
    },
    UnknownParam {
        node: String,
        action: String,
        param: String,
    },
    UnknownVariable {
        node: String,
        action: String,
        variable: String,
    },
    IdMismatch {
        id: String,
        expected: String,
    },
    UnknownCase {
        node: String,
        case: String,
    },
    ChainedGoto {
        node: String,
        case: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::EmptyTree => write!(f, "the tree has no nodes"),
            Problem::Shape { node, detail } => write!(f, "node `{node}` {detail}"),
            Problem::BadId { node } => write!(
                f,
                "node id `{node}` must be lower-case letters, digits and `_`, start with a letter, and not be a Mermaid keyword"
            ),
            Problem::OpenBranch { node, branch } => write!(
                f,
                "question `{node}` has no `{branch}` branch, so that branch does not end in a leaf"
            ),
            Problem::EmptyLeaf { node } => {
                write!(f, "leaf `{node}` has neither actions nor a goto")
            }
            Problem::DuplicateNode { node } => write!(f, "node id `{node}` is used twice"),
            Problem::MissingStart { start } => write!(f, "start node `{start}` does not exist"),
            Problem::DanglingTarget { node, branch, target } => write!(
                f,
                "question `{node}` sends `{branch}` to `{target}`, which does not exist"
            ),
            Problem::Unreachable { node } => {
                write!(f, "node `{node}` cannot be reached from the start node")
            }
            Problem::Cycle { path } => write!(
                f,
                "cycle through node `{}`: {}",
                path.last().map(String::as_str).unwrap_or_default(),
                path.join(" -> ")
            ),
            Problem::UnknownProbe { node, probe } => {
                write!(f, "question `{node}` uses unknown probe `{probe}`")
            }
            Problem::UnknownAction { node, action } => {
                write!(f, "leaf `{node}` uses unknown action `{action}`")
            }
            Problem::UnknownParam { node, action, param } => write!(
                f,
                "leaf `{node}` gives action `{action}` the unknown parameter `{param}`"
            ),
            Problem::UnknownVariable { node, action, variable } => write!(
                f,
                "leaf `{node}` gives action `{action}` the unknown variable `{variable}`"
            ),
            Problem::IdMismatch { id, expected } => write!(
                f,
                "tree id `{id}` does not match its file name (expected `{expected}`)"
            ),
            Problem::UnknownCase { node, case } => {
                write!(f, "leaf `{node}` goes to tree `{case}`, which does not exist")
            }
            Problem::ChainedGoto { node, case } => write!(
                f,
                "leaf `{node}` goes to tree `{case}`, which itself goes to another tree (only one hop is walked)"
            ),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// Checks one tree against itself and the registry's vocabulary. Returns
/// every problem found, not just the first, each naming its node.
pub fn validate(tree: &Tree, registry: &Registry) -> Result<(), Invalid> {
    let problems = problems(tree, registry);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Invalid {
            origin: tree.origin.clone(),
            problems,
        })
    }
}

fn problems(tree: &Tree, registry: &Registry) -> Vec<Problem> {
    let mut out = Vec::new();
    if tree.nodes.is_empty() {
        out.push(Problem::EmptyTree);
        return out;
    }

    let mut seen = BTreeSet::new();
    for node in &tree.nodes {
        if !valid_id(&node.id) {
            out.push(Problem::BadId {
                node: node.id.clone(),
            });
        }
        if !seen.insert(node.id.as_str()) {
            out.push(Problem::DuplicateNode {
                node: node.id.clone(),
            });
        }
    }
    if !seen.contains(tree.start.as_str()) {
        out.push(Problem::MissingStart {
            start: tree.start.clone(),
        });
    }

    for node in &tree.nodes {
        match &node.kind {
            NodeKind::Question(q) => {
                for (branch, target) in node.targets() {
                    if !seen.contains(target) {
                        out.push(Problem::DanglingTarget {
                            node: node.id.clone(),
                            branch,
                            target: target.to_string(),
                        });
                    }
                }
                if let Some(probe) = &q.probe {
                    if !registry.has_probe(probe) {
                        out.push(Problem::UnknownProbe {
                            node: node.id.clone(),
                            probe: probe.clone(),
                        });
                    }
                }
            }
            NodeKind::Leaf(leaf) => {
                if let LeafEnd::Actions(steps) = &leaf.end {
                    for step in steps {
                        check_step(&node.id, step, registry, &mut out);
                    }
                }
            }
        }
    }

    // Graph checks need unique ids and a start; without them they would only
    // repeat the problems above in a more confusing form.
    if out.iter().any(|p| {
        matches!(
            p,
            Problem::DuplicateNode { .. } | Problem::MissingStart { .. }
        )
    }) {
        return out;
    }
    let edges: BTreeMap<&str, Vec<&str>> = tree
        .nodes
        .iter()
        .map(|n| {
            let targets = n
                .targets()
                .into_iter()
                .map(|(_, t)| t)
                .filter(|t| seen.contains(t))
                .collect();
            (n.id.as_str(), targets)
        })
        .collect();
    if let Some(path) = find_cycle(&tree.start, &edges) {
        out.push(Problem::Cycle { path });
    }
    let reachable = reachable_from(&tree.start, &edges);
    for node in &tree.nodes {
        if !reachable.contains(node.id.as_str()) {
            out.push(Problem::Unreachable {
                node: node.id.clone(),
            });
        }
    }
    out
}

fn check_step(node: &str, step: &crate::model::Step, registry: &Registry, out: &mut Vec<Problem>) {
    let Some(spec) = registry.action(&step.action) else {
        out.push(Problem::UnknownAction {
            node: node.to_string(),
            action: step.action.clone(),
        });
        return;
    };
    for (param, value) in &step.params {
        if !spec.params.contains_key(param) {
            out.push(Problem::UnknownParam {
                node: node.to_string(),
                action: step.action.clone(),
                param: param.clone(),
            });
        }
        if let Some(variable) = value.strip_prefix('$') {
            if !registry.has_variable(variable) {
                out.push(Problem::UnknownVariable {
                    node: node.to_string(),
                    action: step.action.clone(),
                    variable: value.clone(),
                });
            }
        }
    }
}

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !RESERVED_IDS.contains(&id)
}

fn reachable_from<'a>(
    start: &'a str,
    edges: &BTreeMap<&'a str, Vec<&'a str>>,
) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![start];
    while let Some(id) = stack.pop() {
        if seen.insert(id) {
            stack.extend(edges.get(id).into_iter().flatten().copied());
        }
    }
    seen
}

/// Depth-first search from `start`; returns the path that closes the first
/// cycle found, ending with the node seen twice.
fn find_cycle(start: &str, edges: &BTreeMap<&str, Vec<&str>>) -> Option<Vec<String>> {
    fn visit<'a>(
        id: &'a str,
        edges: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = path.iter().position(|p| *p == id) {
            let mut cycle: Vec<String> = path[pos..].iter().map(|s| s.to_string()).collect();
            cycle.push(id.to_string());
            return Some(cycle);
        }
        if done.contains(id) {
            return None;
        }
        path.push(id);
        for target in edges.get(id).into_iter().flatten() {
            if let Some(cycle) = visit(target, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(id);
        None
    }
    visit(start, edges, &mut Vec::new(), &mut BTreeSet::new())
}

#[cfg(test)]
mod tests {
    //! Guards invariant 8 for flowcharts: a malformed tree is refused with a
    //! message naming the file and the node.
    use super::*;
    use crate::error::FlowError;

    fn registry() -> Registry {
        Registry::new()
            .with_probe("p", "a probe")
            .with_action("act", "an action", &[("target", "what")])
            .with_variable("unit", "the unit")
    }

    fn refused(text: &str) -> String {
        let tree = match Tree::parse(text, "bad.toml") {
            Ok(tree) => tree,
            Err(e) => return e.to_string(),
        };
        match validate(&tree, &registry()) {
            Ok(()) => panic!("tree was accepted:\n{text}"),
            Err(invalid) => FlowError::Invalid(invalid).to_string(),
        }
    }

    const HEAD: &str = "id = \"bad\"\ntitle = \"t\"\ndescription = \"d\"\nstart = \"q\"\n";

    fn tree(body: &str) -> String {
        format!("{HEAD}{body}")
    }

    const LEAF_A: &str =
        "[[node]]\nid = \"a\"\noutcome = \"o\"\nactions = [{ action = \"act\" }]\n";

    #[test]
    fn well_formed_tree_is_accepted() {
        let text = tree(&format!(
            "[[node]]\nid = \"q\"\nquestion = \"?\"\nprobe = \"p\"\nyes = \"a\"\nno = \"a\"\n{LEAF_A}"
        ));
        let parsed = Tree::parse(&text, "ok.toml").expect("parses");
        assert_eq!(validate(&parsed, &registry()), Ok(()));
    }

    #[test]
    fn unreachable_node_is_refused_by_name() {
        let text = tree(&format!(
            "[[node]]\nid = \"q\"\nquestion = \"?\"\nyes = \"a\"\nno = \"a\"\n{LEAF_A}\
             [[node]]\nid = \"orphan\"\noutcome = \"o\"\nactions = [{{ action = \"act\" }}]\n"
        ));
        let message = refused(&text);
        assert!(message.contains("bad.toml"), "{message}");
        assert!(
            message.contains("node `orphan` cannot be reached"),
            "{message}"
        );
    }

    #[test]
    fn unknown_action_is_refused_by_name() {
        let text = tree(
            "[[node]]\nid = \"q\"\nquestion = \"?\"\nyes = \"a\"\nno = \"a\"\n\
             [[node]]\nid = \"a\"\noutcome = \"o\"\nactions = [{ action = \"format_disk\" }]\n",
        );
        let message = refused(&text);
        assert!(
            message.contains("bad.toml: leaf `a` uses unknown action `format_disk`"),
            "{message}"
        );
    }

    #[test]
    fn unknown_probe_is_refused_by_name() {
        let text = tree(&format!(
            "[[node]]\nid = \"q\"\nquestion = \"?\"\nprobe = \"moon_phase\"\nyes = \"a\"\nno = \"a\"\n{LEAF_A}"
        ));
        let message = refused(&text);
        assert!(
            message.contains("question `q` uses unknown probe `moon_phase`"),
            "{message}"
        );
    }

    #[test]
    fn cycle_is_refused_naming_its_nodes() {
        let text = tree(&format!(
            "[[node]]\nid = \"q\"\nquestion = \"?\"\nyes = \"r\"\nno = \"a\"\n\
             [[node]]\nid = \"r\"\nquestion = \"?\"\nyes = \"q\"\nno = \"a\"\n{LEAF_A}"
        ));
        let message = refused(&text);
        assert!(
            message.contains("cycle through node `q`: q -> r -> q"),
            "{message}"
        );
    }

    #[test]
    fn dangling_target_is_refused() {
        let text = tree(&format!(
            "[[node]]\nid = \"q\"\nquestion = \"?\"\nyes = \"a\"\nno = \"nowhere\"\n{LEAF_A}"
        ));
        let message = refused(&text);
        assert!(
            message.contains("question `q` sends `no` to `nowhere`, which does not exist"),
            "{message}"
        );
    }

    #[test]
    fn missing_branch_is_refused_as_open() {
        let text = tree(&format!(
            "[[node]]\nid = \"q\"\nquestion = \"?\"\nyes = \"a\"\n{LEAF_A}"
        ));
        let message = refused(&text);
        assert!(
            message
                .contains("question `q` has no `no` branch, so that branch does not end in a leaf"),
            "{message}"
        );
    }

    #[test]
    fn duplicate_node_is_refused() {
        let text = tree(&format!(
            "[[node]]\nid = \"q\"\nquestion = \"?\"\nyes = \"a\"\nno = \"a\"\n{LEAF_A}{LEAF_A}"
        ));
        let message = refused(&text);
        assert!(message.contains("node id `a` is used twice"), "{message}");
    }

    #[test]
    fn empty_tree_is_refused() {
        let message = refused(HEAD);
        assert!(
            message.contains("bad.toml: the tree has no nodes"),
            "{message}"
        );
    }

    #[test]
    fn empty_leaf_is_refused() {
        let text = tree(
            "[[node]]\nid = \"q\"\nquestion = \"?\"\nyes = \"a\"\nno = \"a\"\n\
             [[node]]\nid = \"a\"\noutcome = \"o\"\nactions = []\n",
        );
        let message = refused(&text);
        assert!(
            message.contains("leaf `a` has neither actions nor a goto"),
            "{message}"
        );
    }

    #[test]
    fn unknown_parameter_and_variable_are_refused() {
        let text = tree(
            "[[node]]\nid = \"q\"\nquestion = \"?\"\nyes = \"a\"\nno = \"a\"\n\
             [[node]]\nid = \"a\"\noutcome = \"o\"\nactions = [{ action = \"act\", target = \"$moon\", colour = \"red\" }]\n",
        );
        let message = refused(&text);
        assert!(message.contains("unknown parameter `colour`"), "{message}");
        assert!(message.contains("unknown variable `$moon`"), "{message}");
    }

    #[test]
    fn misspelt_key_is_refused_by_the_parser() {
        let text = tree("[[node]]\nid = \"q\"\nquestoin = \"?\"\nyes = \"a\"\nno = \"a\"\n");
        let message = refused(&text);
        assert!(message.starts_with("bad.toml:"), "{message}");
        assert!(message.contains("questoin"), "{message}");
    }

    #[test]
    fn node_both_question_and_leaf_is_refused() {
        let text = tree(
            "[[node]]\nid = \"q\"\nquestion = \"?\"\noutcome = \"o\"\nyes = \"q\"\nno = \"q\"\n",
        );
        let message = refused(&text);
        assert!(
            message.contains("node `q` has both `question` and leaf keys"),
            "{message}"
        );
    }
}
