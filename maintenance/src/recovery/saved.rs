//! A walk an operator answered (`etp recover walk CASE --save FILE`), kept
//! with each answer's evidence and the probe's own answer at the time, so
//! `etp recover run --answers FILE` executes that walk's plan — refusing,
//! and naming the question, if a probe now answers differently from when
//! the operator walked (the state moved under the decision).

use super::probes::LiveProbes;
use anyhow::{bail, Context};
use flowcharts::{Answer, Answers, Node, NodeKind};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One question as the operator answered it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedAnswer {
    /// The question's node id and step.
    pub node: String,
    pub step: Option<String>,
    pub probe: Option<String>,
    /// The operator's answer: "yes" or "no".
    pub answer: String,
    pub evidence: String,
    /// What the probe answered when the operator walked ("yes", "no",
    /// "unanswerable") and why.
    pub probe_answer: String,
    pub probe_evidence: String,
}

/// A saved walk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedWalk {
    pub format: u32,
    /// The tree walked.
    pub tree: String,
    /// The node the walk asked (any node of the topology).
    pub node: String,
    pub saved_at: String,
    pub answers: Vec<SavedAnswer>,
    /// The leaf the walk ended at.
    pub leaf: Option<String>,
}

const FORMAT: u32 = 1;

impl SavedWalk {
    pub fn new(tree: &str, node: std::net::SocketAddr) -> SavedWalk {
        SavedWalk {
            format: FORMAT,
            tree: tree.to_string(),
            node: node.to_string(),
            saved_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            answers: Vec::new(),
            leaf: None,
        }
    }

    /// Writes it (whole, then renamed into place).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text + "\n")
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// Reads a saved walk, checking what it says.
    pub fn load(path: &Path) -> anyhow::Result<SavedWalk> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the saved walk {}", path.display()))?;
        let w: SavedWalk = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a saved walk (etp recover walk --save)",
                path.display()
            )
        })?;
        if w.format != FORMAT {
            bail!(
                "{}: saved walk format {} (this etp reads format {FORMAT})",
                path.display(),
                w.format
            );
        }
        for a in &w.answers {
            if a.answer != "yes" && a.answer != "no" {
                bail!(
                    "{}: question `{}` has answer {:?} (yes or no)",
                    path.display(),
                    a.node,
                    a.answer
                );
            }
        }
        Ok(w)
    }
}

/// Answers a walk from a saved walk, each answer checked against what its
/// probe says now.
pub struct Replayed<'a> {
    pub probes: &'a LiveProbes,
    pub saved: &'a SavedWalk,
}

impl Answers for Replayed<'_> {
    type Error = anyhow::Error;
    fn answer(&mut self, node: &Node) -> anyhow::Result<Answer> {
        let NodeKind::Question(q) = &node.kind else {
            return Ok(Answer::unanswerable("not a question"));
        };
        let Some(s) = self.saved.answers.iter().find(|a| a.node == node.id) else {
            bail!(
                "the saved walk has no answer for question `{}`: the walk took another way; walk again",
                node.id
            );
        };
        let live = match &q.probe {
            Some(p) => self.probes.probe(p),
            None => Answer::unanswerable("no probe: only an operator can answer it"),
        };
        if live.word() != s.probe_answer {
            bail!(
                "question `{}` (probe `{}`): the probe now answers {} ({}), but answered {} ({}) when the walk was saved at {}: the state changed since; walk again",
                node.id,
                q.probe.as_deref().unwrap_or("none"),
                live.word(),
                live.text(),
                s.probe_answer,
                s.probe_evidence,
                self.saved.saved_at
            );
        }
        let evidence = format!("saved walk of {}: {}", self.saved.saved_at, s.evidence);
        Ok(if s.answer == "yes" {
            Answer::yes(evidence)
        } else {
            Answer::no(evidence)
        })
    }
}
