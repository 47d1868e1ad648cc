//! Reporting: a task's state as `etp task status` shows it (per replicate:
//! state, confirmed seq, lag in records, bytes and seconds), transaction
//! cross-references, and the log cleanup plan under the retention rule.

use super::errors::OpError;
use super::feeder::*;
use super::task::Task;
use super::view::transform;
use crate::ids::{DbId, Fnr, Isn, Seq};
use crate::log_record::LogRecord;
use crate::wire::{CleanupPlan, ReplicateReport, TaskReport, XrefEntry, XrefReport};
use crate::wire::{Consistency, Health, ReplicaKind, ReplicaState, TaskState};

impl Task {
    /// The task's state (blocking: reads log records for lag figures).
    pub fn report(&self) -> TaskReport {
        let ctx = &self.ctx;
        let master_seq = ctx
            .db
            .file_info(ctx.log)
            .map(|i| Seq(i.meta.next_isn.saturating_sub(1)))
            .unwrap_or_default();
        let control = ctx.control.snapshot();
        let now = now_us();
        let replicates: Vec<ReplicateReport> = self
            .feeders
            .iter()
            .map(|f| {
                let ctl = control.of(f.name());
                // A copy: the reads below may take a while, and the feeder
                // (or the committing thread sending its tail) must not wait.
                let s = lock(&f.st).clone();
                let lag_records = master_seq.0.saturating_sub(s.confirmed.0);
                let oldest_us = if lag_records > 0 {
                    ctx.db
                        .read_log_record(ctx.log, Seq(s.confirmed.0 + 1))
                        .ok()
                        .flatten()
                        .map(|r| r.time_us)
                } else {
                    None
                };
                let lag_s = oldest_us.map_or(0.0, |t| (now - t).max(0) as f64 / 1e6);
                let stalled_s = match oldest_us {
                    Some(t) => (now - t.max(s.progress_us)).max(0) as f64 / 1e6,
                    None if lag_records > 0 => (now - s.progress_us).max(0) as f64 / 1e6,
                    None => 0.0,
                };
                let health = if lag_records == 0 {
                    Health::Current
                } else if stalled_s >= STALL_AFTER_S {
                    Health::Stalled
                } else {
                    Health::Behind
                };
                let (lag_bytes, exact) = lag_bytes(ctx, s.confirmed, lag_records);
                let (state, reason) = if let Some((why, _)) = &ctl.shunned {
                    (ReplicaState::Shunned, Some(why.clone()))
                } else if let Some(e) = &ctl.error {
                    (ReplicaState::Error, Some(e.reason.clone()))
                } else if let Some(r) = &ctl.restoring {
                    (ReplicaState::Restoring, Some(r.clone()))
                } else if s.load.is_some() || ctl.load.is_some() {
                    (
                        ReplicaState::Initializing,
                        ctl.load.as_ref().map(|l| l.why.clone()),
                    )
                } else if s.streaming {
                    (ReplicaState::Online, None)
                } else if let Some(why) = &s.uninitialized {
                    (ReplicaState::Uninitialized, Some(why.clone()))
                } else {
                    (ReplicaState::Offline, Some(s.phase.clone()))
                };
                let load = s.load.as_ref().map(|l| {
                    let secs = l.started.elapsed().as_secs_f64().max(1e-3);
                    let rate = l.scanned as f64 / secs;
                    let left = l.total.saturating_sub(l.scanned) as f64;
                    crate::wire::LoadReport {
                        id: l.id.clone(),
                        snapshot: l.snapshot,
                        source: l.source.clone(),
                        scanned: l.scanned,
                        total: l.total,
                        loaded: l.loaded,
                        chunks_this_run: l.chunks_this_run,
                        resumed_from: l.resumed_from,
                        rows_per_s: rate,
                        eta_s: (rate > 0.0).then(|| left / rate),
                    }
                });
                ReplicateReport {
                    name: f.name().to_string(),
                    database: DbId(f.rep.def.database),
                    address: f.rep.address.to_string(),
                    kind: if f.rep.is_partial() {
                        ReplicaKind::Partial
                    } else {
                        ReplicaKind::Full
                    },
                    state,
                    reason,
                    phase: s.phase.clone(),
                    feeding: f.running(),
                    sent_seq: s.sent,
                    confirmed_seq: s.confirmed,
                    lag_records,
                    lag_bytes,
                    lag_bytes_exact: exact,
                    lag_s,
                    stalled_s,
                    health,
                    consistency: if ctl.gaps.is_empty() {
                        Consistency::Consistent
                    } else {
                        Consistency::ConsistentExceptGaps
                    },
                    gaps: ctl.gaps.clone(),
                    diverged: ctl.diverged.clone(),
                    load,
                    last_load: ctl.last_load.clone(),
                    last_error: s.last_error.clone(),
                    errors_logged: ctl.errors.len() as u64,
                    connects: s.connects,
                    batches_sent: s.batches,
                    batches_sent_by_committer: s.batches_by_committer,
                    expected_rolled_forward: s.rolled_forward,
                    held: s.hold.as_ref().map(|(hold, at)| crate::wire::HeldReport {
                        hold: hold.clone(),
                        release_at: *at,
                    }),
                    releases: s.releases,
                    sync_down: s
                        .sync_down
                        .as_ref()
                        .map(|d| d.describe(ctx.sync_down_rule().1)),
                }
            })
            .collect();
        let (log_records, log_bytes) = log_size(ctx);
        let warn_bytes = ctx.def.log_warn_mb.unwrap_or(1024) << 20;
        let mut warnings = Vec::new();
        if log_bytes > warn_bytes {
            warnings.push(format!(
                "the log file of master {} holds about {} MiB ({log_records} records), above log_warn_mb = {}: see etp log plan-cleanup",
                ctx.master.name,
                log_bytes >> 20,
                warn_bytes >> 20
            ));
        }
        let running = self.feeders.iter().any(|f| f.running());
        TaskReport {
            master: Fnr(ctx.master.file),
            master_name: ctx.master.name.clone(),
            state: if running {
                TaskState::Running
            } else {
                TaskState::Stopped
            },
            restart_interval_s: ctx.def.restart_interval_s,
            policy: control.policy,
            master_seq,
            log_records,
            log_bytes,
            warnings,
            replicates,
        }
    }

    /// Which replicates have a master transaction (blocking).
    pub fn xref(&self, id: Option<&str>, seq: Option<Seq>) -> Result<Option<XrefReport>, OpError> {
        let ctx = &self.ctx;
        let mut found: Vec<LogRecord> = Vec::new();
        match (id, seq) {
            (Some(id), _) => {
                ctx.db.for_each_raw(ctx.log, Isn(1), |_, b| {
                    let r = LogRecord::decode(b).map_err(|source| crate::DbError::BadRecord {
                        fnr: ctx.log,
                        source,
                    })?;
                    if r.client_id.as_deref() == Some(id) {
                        let last = r.part == r.parts;
                        found.push(r);
                        return Ok(!last);
                    }
                    Ok(true)
                })?;
            }
            (None, Some(seq)) => {
                let Some(r) = ctx.db.read_log_record(ctx.log, seq)? else {
                    return Ok(None);
                };
                // The whole transaction: back to part 1, on to the last part.
                let first = Seq(seq.0 + 1 - u64::from(r.part.max(1)));
                let last = Seq(first.0 + u64::from(r.parts.max(1)) - 1);
                for s in first.0..=last.0 {
                    if let Some(r) = ctx.db.read_log_record(ctx.log, Seq(s))? {
                        found.push(r);
                    }
                }
            }
            (None, None) => {
                return Err(OpError::Refused("name a transaction: --id or --seq".into()))
            }
        }
        let (Some(first), Some(last)) = (found.first(), found.last()) else {
            return Ok(None);
        };
        let control = ctx.control.snapshot();
        let replicates = self
            .feeders
            .iter()
            .map(|f| {
                let ctl = control.of(f.name());
                let confirmed = lock(&f.st).confirmed;
                let touches = found
                    .iter()
                    .any(|r| matches!(transform(&f.rep, r), Ok(Some(_)) | Err(_)));
                let status = if ctl.in_gap(first.seq) || ctl.in_gap(last.seq) {
                    "skipped (gap)"
                } else if confirmed < last.seq {
                    "pending"
                } else if !touches {
                    "applied (changed nothing there: outside its selection)"
                } else {
                    "applied"
                };
                XrefEntry {
                    replicate: f.name().to_string(),
                    status: status.into(),
                    confirmed_seq: confirmed,
                }
            })
            .collect();
        Ok(Some(XrefReport {
            master: Fnr(ctx.master.file),
            first_seq: first.seq,
            last_seq: last.seq,
            lsn: first.lsn,
            time_us: first.time_us,
            client_id: first.client_id.clone(),
            replicates,
        }))
    }

    /// What log cleanup may delete, and why not more (blocking). Nothing is
    /// deleted beyond what every replicate has durably confirmed, nor past
    /// the master's most recent catalogued copy; with no copy, nothing.
    /// What may be deleted from the master's log file, and (with
    /// `execute`) deletes it: log records every replicate has durably
    /// confirmed and at or before `copy_horizon`, the log seq of the
    /// master's most recent catalogued copy (None: no copy, nothing is
    /// deleted), and at or before `until` if given.
    pub fn cleanup_plan(
        &self,
        until: Option<Seq>,
        copy_horizon: Option<Seq>,
        execute: bool,
    ) -> Result<CleanupPlan, OpError> {
        let ctx = &self.ctx;
        let mut first = None;
        let mut last = Seq(0);
        let (mut records, mut bytes) = (0u64, 0u64);
        ctx.db.for_each_raw(ctx.log, Isn(1), |isn, b| {
            first.get_or_insert(Seq(isn.0));
            last = Seq(isn.0);
            records += 1;
            bytes += b.len() as u64;
            Ok(true)
        })?;
        let control = ctx.control.snapshot();
        let mut reps = Vec::new();
        for f in &self.feeders {
            let st = lock(&f.st);
            let ctl = control.of(f.name());
            let (seq, from) = if st.has_confirmation {
                (st.confirmed, "its last durable acknowledgement")
            } else if let Some(a) = ctl.anchor {
                (a.seq, "anchor recorded on this node")
            } else {
                (
                    Seq(0),
                    "unknown (never connected): nothing of the log is released",
                )
            };
            // A load in progress needs everything after its snapshot.
            let seq = match &st.load {
                Some(l) => seq.min(l.snapshot),
                None => seq,
            };
            reps.push((f.name().to_string(), seq, from.to_string()));
        }
        let min_confirmed = reps.iter().map(|r| r.1).min().unwrap_or(last);
        let safe_until = copy_horizon.map(|c| c.min(min_confirmed));
        let mut notes = Vec::new();
        if copy_horizon.is_none() {
            notes.push(format!(
                "no copy of master {} is catalogued in this node's copy area (node run --copy-area): nothing may be deleted (a log record is deleted only when every replicate has durably confirmed it and it is older than the master's most recent copy)",
                ctx.master.name
            ));
        }
        let warn_bytes = ctx.def.log_warn_mb.unwrap_or(1024) << 20;
        if bytes > warn_bytes {
            notes.push(format!(
                "warning: the log file holds {bytes} bytes, above the threshold of {warn_bytes}"
            ));
        }
        let mut deleted = 0;
        if let (true, Some(safe)) = (execute, safe_until) {
            let upto = until.map_or(safe, |u| u.min(safe));
            // In chunks of at most 50 000 records per transaction; log
            // records are only ever deleted from the front.
            let mut from = first.map_or(1, |f| f.0);
            while from <= upto.0 {
                let to = (from + 50_000).min(upto.0 + 1);
                let (_, stats) =
                    ctx.db
                        .restore_range(ctx.log, Isn(from), Some(Isn(to)), Vec::new(), None)?;
                deleted += stats.removed;
                from = to;
            }
            if deleted > 0 {
                notes.push(format!("deleted {deleted} log records up to seq {upto}"));
            }
        }
        let would_strand = match until {
            Some(u) => reps
                .iter()
                .filter(|r| r.1 < u)
                .map(|r| format!("{} (confirmed {}): needs a full reinit", r.0, r.1))
                .collect(),
            None => Vec::new(),
        };
        Ok(CleanupPlan {
            master: Fnr(ctx.master.file),
            master_name: ctx.master.name.clone(),
            first_seq: first.unwrap_or_default(),
            last_seq: last,
            records,
            bytes,
            warn_bytes,
            replicates: reps,
            copy_horizon,
            safe_until,
            requested: until,
            would_strand,
            would_orphan_copies: Vec::new(),
            deleted,
            notes,
        })
    }
}

/// Bytes of the log records a replicate has not confirmed (an estimate from
/// the first `LAG_BYTES_SCAN` beyond that).
pub(super) fn lag_bytes(ctx: &Ctx, confirmed: Seq, lag_records: u64) -> (u64, bool) {
    if lag_records == 0 {
        return (0, true);
    }
    let (mut n, mut bytes) = (0u64, 0u64);
    let r = ctx.db.for_each_raw(ctx.log, Isn(confirmed.0 + 1), |_, b| {
        n += 1;
        bytes += b.len() as u64;
        Ok(n < LAG_BYTES_SCAN)
    });
    if r.is_err() || n == 0 {
        return (0, false);
    }
    if n >= lag_records {
        (bytes, true)
    } else {
        (bytes / n * lag_records, false)
    }
}

/// The log file's record count and its size, estimated from the newest
/// records (cheap enough for every status call).
pub(super) fn log_size(ctx: &Ctx) -> (u64, u64) {
    let Ok(info) = ctx.db.file_info(ctx.log) else {
        return (0, 0);
    };
    let last = info.meta.next_isn.saturating_sub(1);
    let (mut n, mut bytes) = (0u64, 0u64);
    for s in (last.saturating_sub(63).max(1)..=last).rev() {
        if let Ok(Some(b)) = ctx.db.read_durable_raw(ctx.log, Isn(s)) {
            n += 1;
            bytes += b.len() as u64;
        }
    }
    let avg = bytes.checked_div(n).unwrap_or(0);
    (info.meta.count, info.meta.count * avg)
}
