//! The recovery journal: the bound plan and each step's completion, each
//! entry a checksummed frame (JSON payload) of a framed file
//! ([`propagator::framed`]) synced before the step counts as done, so an
//! interrupted run resumes at the first step not journaled done. A torn last
//! entry (a crash while it was written) is cut off: its step was never taken
//! as done. Any other damage is named by byte offset and nothing runs.

use super::plan::*;
use anyhow::{bail, Context};
use propagator::framed::{self, FramedFile};
use propagator::medium::FsDir;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// The seqs (as first given) of master (db, file)'s transactions a
    /// step re-applied from its log after a restore set it back.
    Reapplied {
        db: u32,
        file: u32,
        seqs: Vec<(u64, u64)>,
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
        /// The replicate that held the lost seqs (a diverged replicate
        /// reloaded); None: seqs the master lost for good.
        #[serde(default)]
        replicate: Option<String>,
    },
    End {
        leaf: String,
        at: String,
    },
}

/// The journal file in the state directory.
pub const JOURNAL: &str = "recovery.etpj";
/// The JSON-lines journal of earlier versions, taken over at open.
const LEGACY_JOURNAL: &str = "recovery.jsonl";
const MAGIC: &[u8; 8] = b"ETPRCV01";

/// The recovery journal, held open for appends.
pub(crate) struct RunJournal {
    pub(crate) path: PathBuf,
    file: FramedFile,
    lines: Vec<Line>,
}

fn decode(path: &Path, scan: &framed::Scan) -> anyhow::Result<Vec<Line>> {
    scan.frames
        .iter()
        .map(|(off, p)| {
            serde_json::from_slice::<Line>(p).with_context(|| {
                format!(
                    "recovery journal {} is damaged at byte offset {off}: an entry does not decode; move it aside to start afresh",
                    path.display()
                )
            })
        })
        .collect()
}

/// The entries of the JSON-lines journal of an earlier version (a torn last
/// line dropped), to be carried over.
fn legacy_lines(path: &Path) -> anyhow::Result<Vec<Line>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let n = text.lines().count();
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        match serde_json::from_str::<Line>(l) {
            Ok(x) => out.push(x),
            Err(_) if i + 1 == n && !text.ends_with('\n') => {}
            Err(e) => bail!(
                "recovery journal {} line {}: {e}; move it aside to start afresh",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

/// Every entry of the recovery journal in `state`, as the JSON text it was
/// written as (for tests and tools that inspect a run); empty when there is
/// none.
pub fn entries(state: &Path) -> anyhow::Result<Vec<String>> {
    Ok(read_scan(state)?
        .frames
        .iter()
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect())
}

/// The journal's frames, read without opening anything for writing (a run
/// may be appending to it meanwhile); empty when there is none.
fn read_scan(state: &Path) -> anyhow::Result<framed::Scan> {
    Ok(framed::read_path(&state.join(JOURNAL), MAGIC)?)
}

/// Every entry of the journal in `state`, read only: the framed journal, or
/// the JSON-lines one of an earlier version that was not carried over yet.
fn read_lines(state: &Path) -> anyhow::Result<Vec<Line>> {
    let path = state.join(JOURNAL);
    let legacy = state.join(LEGACY_JOURNAL);
    if !path.exists() && legacy.exists() {
        return legacy_lines(&legacy);
    }
    decode(&path, &read_scan(state)?)
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
        let legacy = dir.join(LEGACY_JOURNAL);
        let medium = FsDir::new(dir);
        if legacy.exists() {
            if !path.exists() {
                // Carried over in one atomic replacement: a crash leaves the
                // old journal alone, or the new one whole.
                let mut b = MAGIC.to_vec();
                for l in legacy_lines(&legacy)? {
                    b.extend_from_slice(&framed::encode_frame(&serde_json::to_vec(&l)?));
                }
                framed::replace(&medium, JOURNAL, &b)?;
            }
            std::fs::remove_file(&legacy)
                .with_context(|| format!("cannot remove {}", legacy.display()))?;
        }
        let (file, scan) = FramedFile::open(Arc::new(medium), JOURNAL, MAGIC)?;
        if let Some(w) = scan.torn_warning(&format!("recovery journal {}", path.display())) {
            tracing::warn!("{w}");
        }
        let lines = decode(&path, &scan)?;
        Ok(RunJournal { path, file, lines })
    }

    pub(crate) fn append(&mut self, line: Line) -> anyhow::Result<()> {
        self.file.append(&serde_json::to_vec(&line)?)?;
        self.lines.push(line);
        Ok(())
    }

    /// The last plan, if it has not ended, with the steps done.
    pub(crate) fn open_plan(&self) -> Option<(BoundPlan, Vec<bool>, Option<usize>)> {
        open_plan_of(&self.lines)
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

    /// The seqs the current plan re-applied to master (db, file), as
    /// first given, in order.
    pub(crate) fn reapplied(&self, db: u32, file: u32) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = self
            .current()
            .iter()
            .filter_map(|l| match l {
                Line::Reapplied {
                    db: d,
                    file: f,
                    seqs,
                } if *d == db && *f == file => Some(seqs.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        out.sort_unstable();
        out.dedup();
        out
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

/// The last plan of `lines`, if it has not ended, with the steps done and
/// the step waiting for an operator.
fn open_plan_of(lines: &[Line]) -> Option<(BoundPlan, Vec<bool>, Option<usize>)> {
    let start = lines.iter().rposition(|l| matches!(l, Line::Plan { .. }))?;
    let Line::Plan { plan, .. } = &lines[start] else {
        return None;
    };
    let mut done = vec![false; plan.steps.len()];
    let mut waiting = None;
    for l in &lines[start + 1..] {
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

/// Says so when the recovery journal in `state` holds a plan that has not
/// ended (None when there is no journal). Reads only: a run may be appending.
pub fn unfinished(state: &Path) -> anyhow::Result<Option<String>> {
    let lines = read_lines(state)?;
    Ok(open_plan_of(&lines).map(|(p, done, _)| {
        format!(
            "an unfinished recovery plan is in {}: {} / {}, {} of {} steps done; finish it first: etp recover run --execute --state {}",
            state.join(JOURNAL).display(),
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
