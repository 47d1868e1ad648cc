//! The recovery journal: the bound plan and each step's completion as JSON
//! lines, each fsync'd before the step counts as done, so an interrupted
//! run resumes at the first step not journaled done.

use super::plan::*;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One line of the recovery journal.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "line", rename_all = "snake_case")]
pub(crate) enum Line {
    Plan {
        plan: BoundPlan,
        at: String,
    },
    Done {
        step: usize,
        detail: String,
        seconds: f64,
    },
    /// Journaled before the plan's first restore on node `addr` writes:
    /// that node's last LSN then, where a later roll-forward of the plan
    /// stops (so the restore's own commits are never replayed, whatever
    /// attempt of it was interrupted).
    Started {
        step: usize,
        addr: String,
        lsn: u64,
    },
    /// A master's level (last seq) right after a step set it back.
    Level {
        db: u32,
        file: u32,
        seq: u64,
    },
    Failed {
        step: usize,
        error: String,
    },
    Waiting {
        step: usize,
    },
    Confirmed {
        step: usize,
    },
    Gap {
        master: String,
        from_seq: u64,
        to_seq: u64,
    },
    End {
        leaf: String,
        at: String,
    },
}

pub(crate) const JOURNAL: &str = "recovery.jsonl";

/// The recovery journal: JSON lines, each written and fsync'd before the
/// step it records is taken as done.
pub(crate) struct RunJournal {
    pub(crate) path: PathBuf,
    lines: Vec<Line>,
}

impl RunJournal {
    pub(crate) fn open(dir: &Path) -> anyhow::Result<RunJournal> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the recovery journal directory {}",
                dir.display()
            )
        })?;
        let path = dir.join(JOURNAL);
        let mut lines = Vec::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                // A torn last line (no newline): its step was never taken as
                // done. Cut it off so the next line starts on its own.
                if !text.is_empty() && !text.ends_with('\n') {
                    let keep = text.rfind('\n').map_or(0, |i| i + 1);
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| {
                            f.set_len(keep as u64)?;
                            f.sync_all()
                        })
                        .with_context(|| {
                            format!("cannot cut the torn tail of {}", path.display())
                        })?;
                }
                let n = text.lines().count();
                for (i, l) in text.lines().enumerate() {
                    match serde_json::from_str::<Line>(l) {
                        Ok(x) => lines.push(x),
                        // A torn last line: its step was never taken as done.
                        Err(_) if i + 1 == n && !text.ends_with('\n') => {}
                        Err(e) => bail!(
                            "recovery journal {} line {}: {e}; move it aside to start afresh",
                            path.display(),
                            i + 1
                        ),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        Ok(RunJournal { path, lines })
    }

    pub(crate) fn append(&mut self, line: Line) -> anyhow::Result<()> {
        let mut text = serde_json::to_string(&line)?;
        text.push('\n');
        let created = !self.path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_data()
            .with_context(|| format!("cannot sync {}", self.path.display()))?;
        if created {
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .with_context(|| format!("cannot sync {}", dir.display()))?;
            }
        }
        self.lines.push(line);
        Ok(())
    }

    /// The last plan, if it has not ended, with the steps done.
    pub(crate) fn open_plan(&self) -> Option<(BoundPlan, Vec<bool>, Option<usize>)> {
        let start = self
            .lines
            .iter()
            .rposition(|l| matches!(l, Line::Plan { .. }))?;
        let Line::Plan { plan, .. } = &self.lines[start] else {
            return None;
        };
        let mut done = vec![false; plan.steps.len()];
        let mut waiting = None;
        for l in &self.lines[start + 1..] {
            match l {
                Line::End { .. } => return None,
                Line::Done { step, .. } | Line::Confirmed { step } => {
                    if let Some(d) = done.get_mut(*step) {
                        *d = true;
                    }
                    if waiting == Some(*step) {
                        waiting = None;
                    }
                }
                Line::Waiting { step } => waiting = Some(*step),
                _ => {}
            }
        }
        Some((plan.clone(), done, waiting))
    }

    /// The lines of the current plan.
    pub(crate) fn current(&self) -> &[Line] {
        match self
            .lines
            .iter()
            .rposition(|l| matches!(l, Line::Plan { .. }))
        {
            Some(start) => &self.lines[start..],
            None => &[],
        }
    }

    /// The LSN node `addr` was at before the current plan's first restore
    /// on it wrote anything.
    pub(crate) fn lsn_before(&self, addr: &str) -> Option<u64> {
        self.current().iter().find_map(|l| match l {
            Line::Started { addr: a, lsn, .. } if a == addr => Some(*lsn),
            _ => None,
        })
    }

    /// The lowest level a step of the current plan set master (db, file) back to.
    pub(crate) fn level_after(&self, db: u32, file: u32) -> Option<u64> {
        self.current()
            .iter()
            .filter_map(|l| match l {
                Line::Level {
                    db: d,
                    file: f,
                    seq,
                } if *d == db && *f == file => Some(*seq),
                _ => None,
            })
            .min()
    }

    /// The most recent plan journaled.
    pub(crate) fn last_plan(&self) -> Option<&BoundPlan> {
        self.lines.iter().rev().find_map(|l| match l {
            Line::Plan { plan, .. } => Some(plan),
            _ => None,
        })
    }

    pub(crate) fn rounds(&self) -> u32 {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Plan { plan, .. } => Some(plan.round),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

/// Says so when the recovery journal in `state` holds a plan that has not
/// ended (None when there is no journal).
pub fn unfinished(state: &Path) -> anyhow::Result<Option<String>> {
    if !state.join(JOURNAL).exists() {
        return Ok(None);
    }
    let j = RunJournal::open(state)?;
    Ok(j.open_plan().map(|(p, done, _)| {
        format!(
            "an unfinished recovery plan is in {}: {} / {}, {} of {} steps done; finish it first: etp recover run --execute --state {}",
            j.path.display(),
            p.tree,
            p.leaf,
            done.iter().filter(|d| **d).count(),
            p.steps.len(),
            state.display()
        )
    }))
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
