//! A set of trees: the shipped ones ([`TreeSet::builtin`]) or a directory of
//! tree files ([`TreeSet::load_dir`]), and the checks that span trees.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::FlowError;
use crate::model::{LeafEnd, Tree};
use crate::registry::Registry;
use crate::validate::{validate, Invalid, Problem};

/// The id of the tree a diagnosis starts with.
pub const TRIAGE: &str = "triage";

/// The shipped trees as `(file name, text)`, triage first.
pub const BUILTIN: &[(&str, &str)] = &[
    ("triage.toml", include_str!("../trees/triage.toml")),
    (
        "case1_isolated.toml",
        include_str!("../trees/case1_isolated.toml"),
    ),
    (
        "case2_replicate.toml",
        include_str!("../trees/case2_replicate.toml"),
    ),
    ("case3_log.toml", include_str!("../trees/case3_log.toml")),
    (
        "case4_master_log.toml",
        include_str!("../trees/case4_master_log.toml"),
    ),
    (
        "case5_admin.toml",
        include_str!("../trees/case5_admin.toml"),
    ),
];

/// Trees by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TreeSet {
    trees: BTreeMap<String, Tree>,
}

impl TreeSet {
    /// The trees shipped in `flowcharts/trees/`, embedded at build time.
    pub fn builtin() -> Result<TreeSet, FlowError> {
        let mut set = TreeSet::default();
        for (file, text) in BUILTIN {
            set.insert(Tree::parse(text, &format!("trees/{file}"))?)?;
        }
        Ok(set)
    }

    /// Every `*.toml` file of `dir`, in file-name order. Not validated: call
    /// [`TreeSet::validate`].
    pub fn load_dir(dir: &Path) -> Result<TreeSet, FlowError> {
        let io = |source| FlowError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                paths.push(path);
            }
        }
        paths.sort();
        let mut set = TreeSet::default();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| FlowError::Io {
                path: path.clone(),
                source,
            })?;
            set.insert(Tree::parse(&text, &path.display().to_string())?)?;
        }
        Ok(set)
    }

    /// Adds a tree; refuses a second tree with the same id.
    pub fn insert(&mut self, tree: Tree) -> Result<(), FlowError> {
        if let Some(first) = self.trees.get(&tree.id) {
            return Err(FlowError::DuplicateTree {
                id: tree.id.clone(),
                first: first.origin.clone(),
                second: tree.origin.clone(),
            });
        }
        self.trees.insert(tree.id.clone(), tree);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<&Tree> {
        self.trees.get(id)
    }

    pub fn triage(&self) -> Option<&Tree> {
        self.get(TRIAGE)
    }

    /// Trees in id order.
    pub fn trees(&self) -> impl Iterator<Item = &Tree> {
        self.trees.values()
    }

    /// Validates every tree, then the links between them: a tree's id is its
    /// file stem, every `goto` names a tree of the set, and the named tree
    /// ends in actions only (a diagnosis walks one hop). Returns one
    /// [`Invalid`] per file with problems.
    pub fn validate(&self, registry: &Registry) -> Result<(), Vec<Invalid>> {
        let mut invalid = Vec::new();
        for tree in self.trees.values() {
            let mut problems = match validate(tree, registry) {
                Ok(()) => Vec::new(),
                Err(e) => e.problems,
            };
            problems.extend(self.cross_tree_problems(tree));
            if !problems.is_empty() {
                invalid.push(Invalid {
                    origin: tree.origin.clone(),
                    problems,
                });
            }
        }
        if invalid.is_empty() {
            Ok(())
        } else {
            Err(invalid)
        }
    }

    fn cross_tree_problems(&self, tree: &Tree) -> Vec<Problem> {
        let mut problems = Vec::new();
        let stem = Path::new(&tree.origin)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if stem != tree.id {
            problems.push(Problem::IdMismatch {
                id: tree.id.clone(),
                expected: stem.to_string(),
            });
        }
        for node in &tree.nodes {
            let Some(LeafEnd::Goto(case)) = node.leaf().map(|l| &l.end) else {
                continue;
            };
            match self.trees.get(case) {
                None => problems.push(Problem::UnknownCase {
                    node: node.id.clone(),
                    case: case.clone(),
                }),
                Some(target)
                    if target
                        .leaves()
                        .any(|l| matches!(l.leaf().map(|l| &l.end), Some(LeafEnd::Goto(_)))) =>
                {
                    problems.push(Problem::ChainedGoto {
                        node: node.id.clone(),
                        case: case.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        problems
    }
}
