//! A streaming link's send side, shared by its feed loop and the thread
//! that made the log's tail durable.
//!
//! At the tail a feeder waits for the next durable commit. Woken through
//! the durable watch, it costs the reactor a wake-up between the master's
//! sync and the batch leaving for the replicate: measured per single-row
//! commit at full speed, 34 µs of a 275 µs commit-to-visible lag (p50), on
//! top of the sync's 126. So the group commit's leader, when no other group
//! waits behind its own, sends the tail itself ([`IdleDurable`]): the same
//! records, transformed and checked by the same code, written to the same
//! socket in the same order, under the same lock as the feed loop's sends.
//! PostgreSQL's backend wakes its walsenders at this point; here the thread
//! that synced is already running.
//!
//! **Built while the log syncs.** A leader nobody waits behind starts the
//! device writing its group, has each link build its batch from the
//! records being synced ([`IdleDurable::prepare`]), then waits for the
//! sync. Once the group is durable, a batch built for exactly that group,
//! on a link that has not moved since, is sent as built; anything else is
//! built again. The build (transform, digest check, encoding: 15-30 µs a
//! link on a core that has been idle) then overlaps the device's write
//! rather than following it: measured, paced commit-to-visible lag p50
//! 0.38 -> 0.35 ms (full) and 0.36 -> 0.37 ms (partial) on top of the
//! applier's hand-off moving behind the hooks (0.43/0.42 before both).
//!
//! The leader only sends a short tail (what a link batch queued inline on
//! the replicate holds); anything longer, a backlog, or a socket that would
//! block is the feed loop's, which runs as before. Either may send a batch;
//! whichever takes the lock first moves the cursor, and the other finds
//! nothing left.

use super::batch::collect_tail;
use super::feeder::*;
use super::view::transform;
use crate::database::IdleDurable;
use crate::digest::FileMeta;
use crate::ids::{Fnr, Lsn, Seq};
use crate::log_record::LogRecord;
use crate::net::split::LinkWriter;
use crate::wire::{Confirmation, LinkRequest, Request};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// The most log records the leader sends itself; a longer tail is left to
/// the feed loop (it runs in parallel with the next sync).
const LEADER_RECORDS: usize = 16;
/// The most image bytes the leader sends itself.
const LEADER_BYTES: usize = 16 << 10;

/// What a streaming link has sent and what it expects.
pub(super) struct SendSide {
    /// The last seq sent.
    pub cursor: Seq,
    /// The replicate's expected state after `cursor`.
    pub expected: FileMeta,
    /// Batches sent and not yet answered: last seq, expected state, image bytes.
    pub inflight: VecDeque<(Seq, FileMeta, usize)>,
    pub inflight_bytes: usize,
    /// Frame bytes not yet written to the socket, in order.
    pending: Vec<u8>,
    /// Whether the leader may send (cleared once the link stops).
    pub open: bool,
    /// Why the link must end, found by the leader while sending.
    pub failed: Option<Stop>,
    /// A batch the leader made ready while syncing its records.
    prepared: Option<Prepared>,
}

/// A batch made ready before its records were durable
/// ([`IdleDurable::prepare`]): sent only if the leader that synced them
/// finds the link where it was.
struct Prepared {
    /// The group's last LSN: the batch may leave once it is durable.
    upto: Lsn,
    /// The link's cursor it follows.
    follows: Seq,
    batch: Built,
}

/// A transformed, checked and encoded batch, not yet the link's.
struct Built {
    last_seq: Seq,
    expected: FileMeta,
    bytes: usize,
    frame: Vec<u8>,
}

impl SendSide {
    /// Whether another batch may be sent: the window has room (while more
    /// than one is in flight, up to [`MAX_INFLIGHT_BYTES`] of images) and
    /// everything before is on the socket.
    pub fn can_send(&self, window: usize) -> bool {
        self.inflight.len() < window
            && (self.inflight.is_empty() || self.inflight_bytes < MAX_INFLIGHT_BYTES)
            && self.pending.is_empty()
            && self.failed.is_none()
    }

    /// Whether bytes wait for the socket to take them.
    pub fn blocked(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the link for the leader, saying why to the feed loop.
    fn fail(&mut self, stop: Stop) {
        self.open = false;
        self.failed = Some(stop);
    }
}

/// A streaming link's send side and its socket.
pub(super) struct Tail {
    ctx: Arc<Ctx>,
    f: Arc<Feeder>,
    writer: LinkWriter,
    pub side: Mutex<SendSide>,
}

impl Tail {
    pub fn new(
        ctx: Arc<Ctx>,
        f: Arc<Feeder>,
        writer: LinkWriter,
        cursor: Seq,
        expected: FileMeta,
    ) -> Tail {
        Tail {
            ctx,
            f,
            writer,
            side: Mutex::new(SendSide {
                cursor,
                expected,
                inflight: VecDeque::new(),
                inflight_bytes: 0,
                pending: Vec::new(),
                open: true,
                failed: None,
                prepared: None,
            }),
        }
    }

    /// Waits until the socket takes more bytes.
    pub async fn writable(&self) -> Result<(), Stop> {
        self.writer
            .writable()
            .await
            .map_err(|e| Stop::Link(format!("sending a batch: {e}")))
    }

    /// Writes what the socket takes of the pending bytes, without waiting.
    pub fn flush(&self, side: &mut SendSide) -> Result<(), Stop> {
        while !side.pending.is_empty() {
            match self.writer.try_write(&side.pending) {
                Ok(0) => return Err(Stop::Link("sending a batch: the socket closed".into())),
                Ok(n) => {
                    side.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Stop::Link(format!("sending a batch: {e}"))),
            }
        }
        if side.pending.capacity() > 1 << 20 {
            side.pending = Vec::new();
        }
        Ok(())
    }

    /// Transforms `batch` (whole transactions after the cursor; any already
    /// sent are skipped) for the replicate, checks it against the master's
    /// digest, and sends it: written as far as the socket takes it, the
    /// rest pending. `by_committer`: sent by the thread that made it durable.
    pub fn send(
        &self,
        side: &mut SendSide,
        batch: Vec<Arc<LogRecord>>,
        by_committer: bool,
    ) -> Result<(), Stop> {
        self.queue(side, batch, by_committer)?;
        self.flush(side)
    }

    /// [`Tail::send`] up to the socket: the frame waits in `pending`.
    fn queue(
        &self,
        side: &mut SendSide,
        batch: Vec<Arc<LogRecord>>,
        by_committer: bool,
    ) -> Result<(), Stop> {
        side.prepared = None;
        match self.build(side, batch)? {
            Some(b) => self.commit(side, b, by_committer),
            None => Ok(()),
        }
    }

    /// Transforms, checks and encodes `batch` after the link's cursor,
    /// without changing the link; `None` when nothing in it is new.
    fn build(&self, side: &SendSide, batch: Vec<Arc<LogRecord>>) -> Result<Option<Built>, Stop> {
        // A predicate the CEL program evaluates (no native form) costs up
        // to its cost limit a record: on the reactor's thread, its batch
        // runs with the reactor's other tasks moved to another thread.
        let slow = self.f.rep.predicate.as_ref().is_some_and(|p| !p.is_fast());
        let on_reactor = || {
            tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        };
        if slow && on_reactor() {
            tokio::task::block_in_place(|| self.build_now(side, batch))
        } else {
            self.build_now(side, batch)
        }
    }

    fn build_now(
        &self,
        side: &SendSide,
        batch: Vec<Arc<LogRecord>>,
    ) -> Result<Option<Built>, Stop> {
        let ctx = &self.ctx;
        let rep = &self.f.rep;
        let name = self.f.name();
        let first = batch.partition_point(|r| r.seq <= side.cursor);
        let batch = &batch[first..];
        let Some(last) = batch.last() else {
            return Ok(None);
        };
        if batch[0].seq.0 != side.cursor.0 + 1 {
            return Err(Stop::Link(format!(
                "internal error: a batch from seq {} after seq {}",
                batch[0].seq, side.cursor
            )));
        }
        let (last_seq, incarnation, time_us) = (last.seq, last.incarnation, last.time_us);
        let bytes: usize = batch.iter().map(|r| r.image_bytes()).sum();
        let mut expected = side.expected;
        let mut changes = Vec::new();
        let mut txn_ends = Vec::new();
        let mut touched = false;
        for rec in batch {
            match transform(rep, rec) {
                Ok(Some(c)) => {
                    touched = true;
                    expected.change(
                        c.isn,
                        c.before.as_deref().map(|b| b.as_slice()),
                        c.after.as_deref().map(|b| b.as_slice()),
                    );
                    changes.push(c);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(Stop::Fatal(format!(
                        "master {} seq {}: {e}",
                        ctx.master.name, rec.seq
                    )))
                }
            }
            if rec.part == rec.parts {
                if touched {
                    txn_ends.push((rec.seq, rec.time_us));
                }
                touched = false;
            }
        }
        let exact = !rep.is_partial() && !ctx.control.has_gaps(name);
        if exact {
            let (mc, md) = (last.master_count, last.master_digest);
            if (mc, md) != (expected.count, expected.digest) {
                return Err(Stop::Fatal(format!(
                    "replicate {name} at seq {last_seq}: the changes shipped give digest {} over {} records, but the master's log says {md} over {mc}; the replicate needs a reinit",
                    expected.digest, expected.count
                )));
            }
        }
        let req = Request::Link(LinkRequest::LinkApply {
            follows: side.cursor,
            changes,
            confirmation: Confirmation {
                replicate: name.to_string(),
                master_db: ctx.db.dbid(),
                master: Fnr(ctx.master.file),
                seq: last_seq,
                incarnation,
                master_time_us: time_us,
                digest: expected.digest,
                count: expected.count,
                applied_us: 0,
                loaded_by: None,
            },
            txn_ends,
        });
        // Too large for a frame: the same batch would be again on every retry.
        let payload = req
            .encode()
            .map_err(|e| Stop::Fatal(format!("sending a batch: {e}")))?;
        let len = u32::try_from(payload.len())
            .map_err(|_| Stop::Fatal(format!("a batch of {} bytes", payload.len())))?;
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&payload);
        Ok(Some(Built {
            last_seq,
            expected,
            bytes,
            frame,
        }))
    }

    /// Makes a built batch the link's: its frame waits in `pending`.
    fn commit(&self, side: &mut SendSide, b: Built, by_committer: bool) -> Result<(), Stop> {
        self.writer
            .append(&mut side.pending, b.frame)
            .map_err(|e| Stop::Link(format!("sending a batch: {e}")))?;
        // The cursor only moves forward: a batch never repeats a seq.
        debug_assert!(b.last_seq > side.cursor);
        side.cursor = b.last_seq;
        side.expected = b.expected;
        side.inflight.push_back((b.last_seq, b.expected, b.bytes));
        side.inflight_bytes += b.bytes;
        let mut st = lock(&self.f.st);
        st.sent = b.last_seq;
        st.batches += 1;
        st.batches_by_committer += u64::from(by_committer);
        Ok(())
    }
}

impl Tail {
    /// The send side, unless the feed loop holds it (it is sending already)
    /// or a send panicked (the link is then failed).
    fn try_side(&self) -> Option<std::sync::MutexGuard<'_, SendSide>> {
        match self.side.try_lock() {
            Ok(side) => Some(side),
            Err(std::sync::TryLockError::WouldBlock) => None,
            // A panic while sending: the link's state cannot be trusted.
            Err(std::sync::TryLockError::Poisoned(p)) => {
                let mut side = p.into_inner();
                if side.open {
                    side.fail(Stop::Link(
                        "internal error: a send on this link panicked".into(),
                    ));
                }
                None
            }
        }
    }

    /// The short tail after the cursor the leader may send itself (up to
    /// `upto`, or what is durable): none if the link is closed or its
    /// window full, or if there is nothing new, it is not all in memory,
    /// it is longer than a short tail, or it cannot be read (the feed loop
    /// reads, and reports, the rest).
    fn short_tail(&self, side: &SendSide, upto: Option<Lsn>) -> Option<Vec<Arc<LogRecord>>> {
        if !side.open || !side.can_send(self.ctx.window) {
            return None;
        }
        let max = LEADER_RECORDS.min(self.ctx.batch);
        match collect_tail(&self.ctx, side.cursor, max, LEADER_BYTES, upto) {
            Ok(Some(b)) if !b.is_empty() => Some(b),
            _ => None,
        }
    }
}

impl IdleDurable for Tail {
    /// Builds the short tail the leader is syncing, as `durable` would
    /// once it is durable; the link itself does not move.
    fn prepare(&self, upto: Lsn) {
        let Some(mut side) = self.try_side() else {
            return;
        };
        side.prepared = None;
        let Some(batch) = self.short_tail(&side, Some(upto)) else {
            return;
        };
        // A batch that fails its checks is built again by `durable` (or
        // the feed loop), which reports it.
        if let Ok(Some(batch)) = self.build(&side, batch) {
            let follows = side.cursor;
            side.prepared = Some(Prepared {
                upto,
                follows,
                batch,
            });
        }
    }

    /// The leader's pass: a short durable tail the feed loop has not sent
    /// yet goes out from this thread.
    fn durable(&self, lsn: Lsn) -> bool {
        let Some(mut side) = self.try_side() else {
            return false;
        };
        let prepared = side.prepared.take();
        if !side.open || !side.can_send(self.ctx.window) {
            return false;
        }
        // Made ready while this very group was synced, and the link has
        // not moved since: everything up to `lsn` is in it.
        if let Some(p) = prepared {
            if p.upto == lsn && p.follows == side.cursor {
                return match self.commit(&mut side, p.batch, true) {
                    Ok(()) => true,
                    Err(stop) => {
                        side.fail(stop);
                        false
                    }
                };
            }
        }
        let Some(batch) = self.short_tail(&side, None) else {
            return false;
        };
        match self.queue(&mut side, batch, true) {
            Ok(()) => true,
            Err(stop) => {
                side.fail(stop);
                false
            }
        }
    }

    fn flush(&self) {
        let mut side = lock(&self.side);
        if let Err(stop) = Tail::flush(self, &mut side) {
            side.fail(stop);
        }
    }
}
