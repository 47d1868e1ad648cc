//! A whole protection log read end to end, told apart: where it starts,
//! the last LSN before any damage, and — when a frame in the middle is
//! damaged (well-formed frames follow it) — which commits after it are
//! lost to a recovery that must stop before it, with the files they touched.
//! A torn tail (nothing well-formed after the fault) is the log's end.

use super::reader::{frames_from, open_segments_readonly, valid_frame_after, LogScan};
use super::{LogError, PlogEntry};
use crate::ids::{DbId, Fnr, Lsn};
use crate::medium::MediumDir;
use std::collections::BTreeSet;

/// What a survey found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Survey {
    /// The first LSN the log holds (its oldest segment's first).
    pub first: Lsn,
    /// The last commit read before the first damage (or the log's end).
    pub last_good: Lsn,
    pub damage: Option<Damage>,
    /// Every file a commit up to `last_good` changed.
    pub touched: BTreeSet<Fnr>,
}

/// Damage in the middle of the log.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Damage {
    pub path: String,
    pub offset: u64,
    pub reason: String,
    /// The commits read after the damage (frames that are whole on their
    /// own): lost to a recovery that stops at `last_good`.
    pub after: Vec<LostCommit>,
    /// Those commits themselves, in LSN order, when the survey was asked
    /// to keep them ([`survey_keeping`]): what a recovery may re-apply.
    #[serde(skip)]
    pub commits: Vec<super::Commit>,
}

/// A commit past the damage.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LostCommit {
    pub lsn: Lsn,
    pub time_us: i64,
    /// The files it changed (log files of masters included).
    pub files: BTreeSet<Fnr>,
}

impl Damage {
    /// The LSNs lost: from the one after the last good to the last commit
    /// read after the damage.
    pub fn lost_through(&self) -> Option<Lsn> {
        self.after.iter().map(|c| c.lsn).max()
    }

    /// Every file a lost commit touched.
    pub fn files(&self) -> BTreeSet<Fnr> {
        self.after
            .iter()
            .flat_map(|c| c.files.iter().copied())
            .collect()
    }
}

/// Reads the whole log in `dir`.
pub fn survey(dir: &dyn MediumDir, dbid: DbId) -> Result<Survey, LogError> {
    survey_keeping(dir, dbid, false)
}

/// [`survey`], keeping the commits read after a damage in the middle
/// (`keep`) in [`Damage::commits`].
pub fn survey_keeping(dir: &dyn MediumDir, dbid: DbId, keep: bool) -> Result<Survey, LogError> {
    let mut touched = BTreeSet::new();
    let mut after = Vec::new();
    let mut commits = Vec::new();
    let read = read_commits(dir, dbid, Lsn(0), Lsn(u64::MAX), &mut |c, past_fault| {
        let files = c
            .metas
            .iter()
            .map(|m| m.fnr)
            .chain(c.changes.iter().map(|ch| ch.fnr));
        if past_fault {
            after.push(LostCommit {
                lsn: c.lsn,
                time_us: c.time_us,
                files: files.collect(),
            });
            if keep {
                commits.push(c);
            }
        } else {
            touched.extend(files);
        }
    })?;
    Ok(match read.fault {
        None => Survey {
            first: read.first,
            last_good: read.last,
            damage: None,
            touched,
        },
        Some(f) => Survey {
            first: read.first,
            last_good: f.last_good,
            touched,
            damage: Some(Damage {
                path: f.path,
                offset: f.offset,
                reason: f.reason,
                after,
                commits,
            }),
        },
    })
}

/// Where a read of the log met damage in the middle.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Fault {
    pub path: String,
    pub offset: u64,
    pub reason: String,
    /// The last commit read before it: the log replays whole only to here.
    pub last_good: Lsn,
    /// The first commit read whole after it, if any (what lies between
    /// is lost).
    pub resumed: Option<Lsn>,
}

/// What [`read_commits`] read of the log.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReadBack {
    /// The first LSN the log holds (its oldest segment's first).
    pub first: Lsn,
    /// The last commit read, at or before the bound (none: the LSN before
    /// the first segment read).
    pub last: Lsn,
    /// Damage in the middle of the read stretch, if any.
    pub fault: Option<Fault>,
}

/// Reads every whole commit in the log in `dir` with LSN in `from..=upto`,
/// in LSN order, passing each to `on` (with whether it was read past a
/// damage). The read starts at the segment
/// holding `from`; past damage in the middle it goes on at the next
/// well-formed frame (those commits are passed too: what lies after the
/// damage is intact on its own), and the damage is reported. Damage past
/// `upto`, and a torn tail, are not faults. The log may be a live node's
/// (its last segment still growing): what was durable when the segments
/// were opened is read.
pub fn read_commits(
    dir: &dyn MediumDir,
    dbid: DbId,
    from: Lsn,
    upto: Lsn,
    on: &mut dyn FnMut(super::Commit, bool),
) -> Result<ReadBack, LogError> {
    let segs = open_segments_readonly(dir, dbid)?;
    let first = segs.first().map(|s| s.header.first_lsn).unwrap_or(Lsn(1));
    let start = segs
        .iter()
        .rposition(|s| s.header.first_lsn <= from)
        .unwrap_or(0);
    let mut scan = LogScan::new(&segs, start);
    // (Before any commit: the LSN before the first segment read.)
    let mut last = scan.last_lsn();
    let mut pass = |c: super::Commit, last: &mut Lsn, past_fault: bool| {
        if c.lsn > *last && c.lsn >= from && c.lsn <= upto {
            *last = c.lsn;
            on(c, past_fault);
        }
    };
    let fault = loop {
        match scan.next_frame() {
            Ok(Some(f)) => {
                if let PlogEntry::Commit(c) = f.entry {
                    if c.lsn > upto {
                        break None;
                    }
                    let at_end = c.lsn >= upto;
                    pass(c, &mut last, false);
                    // Nothing past the bound is read (a live node may be
                    // writing there).
                    if at_end {
                        break None;
                    }
                }
            }
            Ok(None) => break None,
            Err(f) => break Some(f),
        }
    };
    let Some(f) = fault else {
        return Ok(ReadBack {
            first,
            last,
            fault: None,
        });
    };
    let last_good = scan.last_lsn();
    if last_good >= upto {
        // Damage past the stretch asked for.
        return Ok(ReadBack {
            first,
            last,
            fault: None,
        });
    }
    let io = |path: &str, e: std::io::Error| LogError::Io {
        path: path.to_string(),
        source: e,
    };
    let seg = &segs[f.seg_idx];
    let resume = valid_frame_after(seg, f.offset).map_err(|e| io(&seg.path, e))?;
    let later = f.seg_idx + 1 < segs.len();
    if resume.is_none() && !later {
        // A torn tail.
        return Ok(ReadBack {
            first,
            last,
            fault: None,
        });
    }
    let mut resumed = None;
    let mut rest = |entries: Vec<(u64, PlogEntry)>, last: &mut Lsn| {
        for (_, e) in entries {
            if let PlogEntry::Commit(c) = e {
                if c.lsn > last_good && c.lsn <= upto && c.lsn > *last {
                    resumed.get_or_insert(c.lsn);
                    pass(c, last, true);
                }
            }
        }
    };
    if let Some(at) = resume {
        rest(
            frames_from(seg, at).map_err(|e| io(&seg.path, e))?,
            &mut last,
        );
    }
    for s in &segs[f.seg_idx + 1..] {
        rest(
            frames_from(s, super::format::HEADER_LEN).map_err(|e| io(&s.path, e))?,
            &mut last,
        );
    }
    Ok(ReadBack {
        first,
        last,
        fault: Some(Fault {
            path: f.path,
            offset: f.offset,
            reason: f.reason,
            last_good,
            resumed,
        }),
    })
}
