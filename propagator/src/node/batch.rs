//! The batch reader: the next durable log records after a feeder's cursor,
//! whole transactions up to the batch size, waiting on the durable-LSN watch.

use super::feeder::*;
use crate::ids::{Lsn, Seq};
use crate::log_record::LogRecord;
use std::sync::Arc;

/// The durable log records after `cursor`: whole transactions, up to the
/// batch size. With `store` false only the log's tail in memory is read
/// (`None`: the page store must be read, which may block on I/O).
fn collect(
    c: &Ctx,
    cursor: Seq,
    store: bool,
) -> Result<Option<Vec<Arc<LogRecord>>>, crate::DbError> {
    let mut out: Vec<Arc<LogRecord>> = Vec::new();
    let mut bytes = 0usize;
    let mut seq = cursor.0 + 1;
    'read: loop {
        // Whole transactions: read on past the batch size to the end of
        // the last one.
        // Past the byte limit inside a transaction the read goes on to its
        // end, a MiB at a time (a transaction may hold 64 MiB of images).
        let left = MAX_BATCH_BYTES.saturating_sub(bytes).max(1 << 20);
        let max = c.batch.max(64);
        let run = if store {
            c.db.read_log_run(c.log, Seq(seq), max, left)?
        } else {
            match c.db.read_log_tail(c.log, Seq(seq), max, left)? {
                Some(run) => run,
                None if out.is_empty() => return Ok(None),
                None => break,
            }
        };
        if run.is_empty() {
            break;
        }
        for rec in run {
            bytes += rec.image_bytes();
            let boundary = rec.part == rec.parts;
            out.push(rec);
            seq += 1;
            if boundary && (out.len() >= c.batch || bytes >= MAX_BATCH_BYTES) {
                break 'read;
            }
        }
    }
    // Never ship part of a transaction.
    while out.last().is_some_and(|r| r.part != r.parts) {
        out.pop();
    }
    Ok(Some(out))
}

/// The durable records after `cursor` when they are a short tail, all in
/// memory: at most `max` records and `max_bytes` of images, ending a
/// transaction, with nothing durable after them. `None` otherwise (the
/// feed loop's to read). `upto`: the records up to that LSN instead, which
/// its leader is syncing (see [`crate::database::IdleDurable::prepare`]).
pub(super) fn collect_tail(
    c: &Ctx,
    cursor: Seq,
    max: usize,
    max_bytes: usize,
    upto: Option<Lsn>,
) -> Result<Option<Vec<Arc<LogRecord>>>, crate::DbError> {
    let from = Seq(cursor.0 + 1);
    let run = match upto {
        None => c.db.read_log_tail(c.log, from, max + 1, max_bytes)?,
        Some(upto) => {
            c.db.read_log_tail_upto(c.log, from, max + 1, max_bytes, upto)?
        }
    };
    let Some(run) = run else {
        return Ok(None);
    };
    let bytes: usize = run.iter().map(|r| r.image_bytes()).sum();
    let whole = run.last().is_some_and(|r| r.part == r.parts);
    Ok((run.len() <= max && bytes <= max_bytes && whole).then_some(run))
}

/// The next durable log records after `cursor`: whole transactions, up to
/// the batch size; waits (without polling) until there is at least one.
/// Records the log's tail holds are read on the reactor (no hand-off to a
/// blocking thread: a streaming feeder finds the newest commits there);
/// older ones on the blocking pool.
///
/// Returns nothing (an empty batch) once `moved` says the link's state
/// changed under it (the leader sent the tail itself, or failed), so that
/// the feed loop looks again.
pub(super) async fn next_batch(
    ctx: &Arc<Ctx>,
    cursor: Seq,
    durable: &mut tokio::sync::watch::Receiver<crate::ids::Lsn>,
    moved: impl Fn() -> bool,
) -> Result<Vec<std::sync::Arc<LogRecord>>, Stop> {
    loop {
        durable.borrow_and_update();
        if moved() {
            return Ok(Vec::new());
        }
        let read = match collect(ctx, cursor, false) {
            Ok(Some(b)) => Ok(Ok(b)),
            Err(e) => Ok(Err(e)),
            Ok(None) => {
                let c = ctx.clone();
                tokio::task::spawn_blocking(move || {
                    collect(&c, cursor, true).map(Option::unwrap_or_default)
                })
                .await
            }
        };
        match read {
            Ok(Ok(b)) if !b.is_empty() => return Ok(b),
            Ok(Ok(_)) => {}
            // A log record that does not decode: the log file is damaged,
            // not the replicate. Mark the log and stop feeding (its
            // recovery flow, case 3, rebuilds or refreshes it).
            Ok(Err(e @ crate::DbError::BadRecord { .. }))
            | Ok(Err(e @ crate::DbError::FileDamaged { .. })) => {
                let why = format!("the master's log file {} is damaged: {e}", ctx.log);
                ctx.db.mark_damaged(ctx.log, why.clone());
                return Err(Stop::Stopped(why));
            }
            Ok(Err(e)) => return Err(Stop::Fatal(format!("reading the log file: {e}"))),
            Err(e) => return Err(Stop::Link(format!("internal error: {e}"))),
        }
        if durable.changed().await.is_err() {
            return Err(Stop::Link("the master database closed".into()));
        }
    }
}
