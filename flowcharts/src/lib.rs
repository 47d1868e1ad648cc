//! Recovery decision trees as data.
//!
//! The recovery cases of the ETP restart-and-recovery chapter (seed 004, as
//! reconstructed in DOMAIN.md §2) are kept as TOML files in `trees/`: a
//! triage that picks the case, and one tree per case. This crate knows
//! nothing of the engine: it parses, validates, renders and walks the trees;
//! the engine answers the questions (probes) and performs the plans
//! (actions).
//!
//! Main types:
//! - [`Tree`], [`Node`], [`Question`], [`Leaf`], [`Step`]: one tree, typed.
//! - [`Registry`]: the probe, action and variable names a caller knows;
//!   [`Registry::standard`] is the vocabulary of the shipped trees.
//! - [`TreeSet`]: several trees ([`TreeSet::builtin`], [`TreeSet::load_dir`]).
//! - [`Answers`]: the seam through which a walk asks its questions.
//! - [`Walk`], [`Visit`], [`Plan`], [`Diagnosis`]: what a walk returns, all
//!   serde-serializable for `--json`.
//!
//! Data flow:
//! 1. [`Tree::parse`] turns TOML into a [`Tree`], refusing malformed nodes.
//! 2. [`validate`] (one tree) or [`TreeSet::validate`] (with the links
//!    between trees) refuses unreachable nodes, cycles, dangling targets,
//!    unknown probes and actions, naming the file and the node.
//! 3. [`to_mermaid`] / [`to_dot`] render a tree; `rendered/` holds the
//!    committed renders.
//! 4. [`walk`] follows a tree from its start node, asking an [`Answers`]
//!    for each question, to a leaf; [`diagnose`] walks triage and then the
//!    case it names.
//!
//! Invariants: a tree that passes validation is a finite DAG whose every
//! path ends at a leaf, so a walk over it ends after at most one visit per
//! node. Rendering is deterministic.
//!
//! Start reading at `trees/triage.toml`, then [`walk`].

mod error;
mod model;
mod registry;
mod render;
mod set;
mod validate;
mod walk;

pub use error::FlowError;
pub use model::{Leaf, LeafEnd, Node, NodeKind, Question, Step, Tree};
pub use registry::{
    ActionEntry, ActionSpec, Registry, STANDARD_ACTIONS, STANDARD_PROBES, STANDARD_VARIABLES,
};
pub use render::{to_dot, to_mermaid, BLESS_HINT};
pub use set::{TreeSet, BUILTIN, TRIAGE};
pub use validate::{validate, Invalid, Problem};
pub use walk::{diagnose, walk, Answer, Answers, Diagnosis, Plan, Visit, Walk, WalkError};
